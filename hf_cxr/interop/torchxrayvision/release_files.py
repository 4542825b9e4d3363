"""Reading torchxrayvision's release files without running anything they name: `load_release_file` reads a
zip-format file with `torch.load(weights_only=True)` and a legacy-format one with `_LegacyUnpickler`, both allowing
only torch's tensor and storage globals plus the module classes of `PICKLED_MODULE_CLASSES`, each built as an inert
`PickledModule` stand-in, and flattens a pickled DenseNet to its state dict.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import struct
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch


class PickledModule:
    """Inert stand-in for a module class named in a release file: the unpickler creates it with `object.__new__` and
    hands it the saved attribute dict, which it keeps as `state`. Nothing of the saved class runs."""

    pickled_class: ClassVar[str] = ""

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(f"{self.pickled_class}: saved state is a {type(state).__name__}, not a dict")
        self.state = state


# The globals of a torchxrayvision DenseNet release file besides torch's weights-only defaults, as
# `torch.serialization.get_unsafe_globals_in_checkpoint` lists them for `torch.save(xrv.models.DenseNet(...))`
# (torchxrayvision 1.5.7; zip and legacy formats): its module classes, exactly these.
PICKLED_MODULE_CLASSES: tuple[str, ...] = (
    "torchxrayvision.models.DenseNet",
    "torchxrayvision.models._DenseBlock",
    "torchxrayvision.models._DenseLayer",
    "torchxrayvision.models._Transition",
    "torch.nn.modules.activation.ReLU",
    "torch.nn.modules.batchnorm.BatchNorm2d",
    "torch.nn.modules.container.Sequential",
    "torch.nn.modules.conv.Conv2d",
    "torch.nn.modules.linear.Linear",
    "torch.nn.modules.pooling.AvgPool2d",
    "torch.nn.modules.pooling.MaxPool2d",
)
_STAND_INS: dict[str, type[PickledModule]] = {
    name: type(f"Pickled_{name.rsplit('.', 1)[-1]}", (PickledModule,), {"pickled_class": name})
    for name in PICKLED_MODULE_CLASSES
}
_TOP_LEVEL_CLASS = "torchxrayvision.models.DenseNet"


def _check_torch_supports_stand_ins() -> None:
    """`safe_globals` with `(object, "module.Name")` pairs exists from torch 2.6; raise `ImportError` before."""
    from packaging.version import Version

    if Version(torch.__version__.split("+")[0]) < Version("2.6") or not hasattr(torch.serialization, "safe_globals"):
        raise ImportError(
            f"reading torchxrayvision's release files safely needs torch >= 2.6 (installed: {torch.__version__})"
        )


def load_release_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The state dict of a torchxrayvision release file, read without running anything the file names.

    Two on-disk formats exist. The zip format (`torch.save` since torch 1.6) is read by
    `torch.load(weights_only=True)` with the stand-ins of `PICKLED_MODULE_CLASSES` allow-listed
    (`torch.serialization.safe_globals`). The legacy format (torch < 1.6, that of torchxrayvision's 2019-2020
    DenseNet releases, which record modules as `("module", class, source file, source)` persistent ids that
    `weights_only=True` refuses) is read by `_LegacyUnpickler`, which allows the same classes and, like torch's
    weights-only unpickler, only the tensor rebuild functions, storages, `OrderedDict` and `set` besides; the source
    text a legacy file carries is ignored, never executed.

    A whole pickled DenseNet comes back as a tree of inert stand-ins and is flattened to `name -> tensor` as
    `state_dict()` would (persistent parameters and buffers); a plain state dict is returned as it is. Tensors are
    on the CPU.

    Raises `FileNotFoundError` for a missing file and `ValueError` naming the file for one that names a global
    outside the allow-list, is not a torch file, or holds something else.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"'{path}' does not exist")
    try:
        if zipfile.is_zipfile(path):
            _check_torch_supports_stand_ins()
            allowed = [(stand_in, name) for name, stand_in in _STAND_INS.items()]
            with torch.serialization.safe_globals(allowed):
                loaded = torch.load(path, map_location="cpu", weights_only=True)
        else:
            loaded = _load_legacy(path)
    except pickle.UnpicklingError as error:
        found = re.search(r"GLOBAL (\S+)", str(error))
        if not found:
            raise ValueError(f"'{path}' was refused by the safe unpickler: {str(error).splitlines()[0]}") from None
        name = found.group(1) if "." in found.group(1) else f"builtins.{found.group(1)}"  # torch drops "builtins."
        raise ValueError(
            f"'{path}' refers to {name}, which is not among the globals a torchxrayvision release file "
            f"holds ({', '.join(PICKLED_MODULE_CLASSES)}, tensors and storages); hf-cxr reads these files with that "
            "allow-list only and refused this one"
        ) from None
    except (RuntimeError, EOFError, OSError, struct.error) as error:
        raise ValueError(f"'{path}' is not a readable torch file ({str(error).splitlines()[0]})") from None
    if isinstance(loaded, PickledModule):
        if loaded.pickled_class != _TOP_LEVEL_CLASS:
            raise ValueError(f"'{path}' holds a pickled {loaded.pickled_class}, not a {_TOP_LEVEL_CLASS}")
        return _flatten(loaded, "", path)
    if isinstance(loaded, Mapping) and loaded and all(isinstance(value, torch.Tensor) for value in loaded.values()):
        return {str(key): value for key, value in loaded.items()}
    raise ValueError(f"'{path}' holds a {type(loaded).__name__}, neither a pickled DenseNet nor a state dict")


# torch's legacy serialization format (`torch.save(..., _use_new_zipfile_serialization=False)`, the default before
# torch 1.6): pickles of a magic number, a protocol version and system information, then the object (storages as
# persistent ids), then the list of storage keys, then each storage's element count (int64) and raw bytes.
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_STORAGE_DTYPES: dict[str, torch.dtype] = {
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


@dataclass(frozen=True)
class _StorageType:
    dtype: torch.dtype


@dataclass(frozen=True)
class _StorageView:
    """A legacy storage (or a view into one): the flat buffer and the view's first element."""

    buffer: torch.Tensor
    offset: int
    numel: int


def _rebuild_tensor(storage: _StorageView, storage_offset: int, size: Any, stride: Any, *_ignored: Any) -> torch.Tensor:
    """`torch._utils._rebuild_tensor(_v2)` for a legacy file: a strided view of the storage's buffer, checked to lie
    inside it (requires_grad, hooks and metadata are dropped)."""
    if not isinstance(storage, _StorageView):
        raise pickle.UnpicklingError(f"a tensor's storage is a {type(storage).__name__}")
    size, stride = tuple(int(v) for v in size), tuple(int(v) for v in stride)
    if len(size) != len(stride) or storage_offset < 0 or any(v < 0 for v in (*size, *stride)):
        raise pickle.UnpicklingError(f"malformed tensor (size {size}, stride {stride}, offset {storage_offset})")
    last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True)) if all(size) else -1
    if last >= storage.numel:
        raise pickle.UnpicklingError(f"a tensor of size {size} reaches past its storage of {storage.numel} elements")
    return storage.buffer.as_strided(size, stride, storage.offset + storage_offset)


def _rebuild_parameter(data: torch.Tensor, *_ignored: Any) -> torch.Tensor:
    """`torch._utils._rebuild_parameter` for a legacy file: the parameter's tensor."""
    if not isinstance(data, torch.Tensor):
        raise pickle.UnpicklingError(f"a parameter's data is a {type(data).__name__}")
    return data


_LEGACY_CALLABLES: dict[str, Any] = {
    "torch._utils._rebuild_tensor": _rebuild_tensor,
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "collections.OrderedDict": OrderedDict,
    "builtins.set": set,
}


class _LegacyUnpickler(pickle.Unpickler):
    """Unpickler of legacy torch files that builds only allow-listed globals (Python's "restricting globals" recipe):
    the stand-ins of `PICKLED_MODULE_CLASSES`, `_LEGACY_CALLABLES` and storage types. Storages are allocated empty
    (their sizes checked against the file's) and filled by `_load_legacy` from the bytes after the pickle."""

    def __init__(self, file: io.BytesIO, storages: dict[str, torch.Tensor], limit: int) -> None:
        super().__init__(file)
        self.storages = storages
        self.limit = limit  # the file's size: no storage can hold more bytes

    def find_class(self, module: str, name: str) -> Any:
        module = "builtins" if module == "__builtin__" else module  # protocol-2 pickles use Python 2's name
        full = f"{module}.{name}"
        if full in _STAND_INS:
            return _STAND_INS[full]
        if full in _LEGACY_CALLABLES:
            return _LEGACY_CALLABLES[full]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        raise pickle.UnpicklingError(f"Unsupported global: GLOBAL {full}")

    def persistent_load(self, pid: Any) -> Any:
        kind = pid[0].decode("ascii") if isinstance(pid, tuple) and pid and isinstance(pid[0], bytes) else None
        kind = pid[0] if kind is None and isinstance(pid, tuple) and pid else kind
        if kind == "module" and len(pid) == 4:  # (kind, class, source file, source): the source is ignored
            if isinstance(pid[1], type) and issubclass(pid[1], PickledModule):
                return pid[1]
            raise pickle.UnpicklingError(f"a module reference to {pid[1]!r}")
        if kind == "storage" and len(pid) == 6:
            _, storage_type, key, _location, numel, view = pid
            if not isinstance(storage_type, _StorageType) or not isinstance(numel, int) or numel < 0:
                raise pickle.UnpicklingError(f"malformed storage reference {pid[:2]}")
            element_size = torch.empty((), dtype=storage_type.dtype).element_size()
            if numel * element_size > self.limit:
                raise pickle.UnpicklingError(f"a storage of {numel} elements is larger than the file")
            buffer = self.storages.setdefault(str(key), torch.empty(numel, dtype=storage_type.dtype))
            if buffer.dtype != storage_type.dtype or buffer.numel() != numel:
                raise pickle.UnpicklingError(f"storage {key} is declared twice with different types or sizes")
            if view is None:
                return _StorageView(buffer, 0, numel)
            _view_key, offset, view_numel = view
            if offset < 0 or view_numel < 0 or offset + view_numel > numel:
                raise pickle.UnpicklingError(f"a view of storage {key} lies outside it")
            return _StorageView(buffer, int(offset), int(view_numel))
        raise pickle.UnpicklingError(f"persistent id {kind!r} is neither a module nor a storage")


def _load_legacy(path: Path) -> Any:
    """Read a legacy-format torch file with `_LegacyUnpickler` (see `load_release_file`)."""
    data = path.read_bytes()
    stream = io.BytesIO(data)
    storages: dict[str, torch.Tensor] = {}

    def header() -> Any:
        return _LegacyUnpickler(stream, storages, len(data)).load()

    if header() != _LEGACY_MAGIC or header() != _LEGACY_PROTOCOL:
        raise RuntimeError("neither a zip nor a legacy torch file (no torch magic number)")
    system = header()
    if not isinstance(system, dict) or not system.get("little_endian", False):
        raise RuntimeError("a big-endian legacy torch file")
    loaded = header()
    keys = header()
    if not isinstance(keys, list) or sorted(map(str, keys)) != sorted(storages):
        raise RuntimeError("the storage list does not match the storages the object refers to")
    for key in map(str, keys):
        buffer = storages[key]
        (count,) = struct.unpack("<q", stream.read(8))
        raw = stream.read(count * buffer.element_size())
        if count != buffer.numel() or len(raw) != count * buffer.element_size():
            raise RuntimeError(f"storage {key}: the file holds {count} elements, {buffer.numel()} expected")
        if count:
            buffer.copy_(torch.frombuffer(bytearray(raw), dtype=buffer.dtype))
    return loaded


def _flatten(module: PickledModule, prefix: str, path: Path) -> dict[str, torch.Tensor]:
    """`state_dict()` of a stand-in tree: parameters, then persistent buffers, then children, dotted names."""
    state = module.state
    skipped = set(state.get("_non_persistent_buffers_set") or ())
    flat: dict[str, torch.Tensor] = {}
    for group in ("_parameters", "_buffers"):
        entries = state.get(group) or {}
        if not isinstance(entries, Mapping):
            raise ValueError(f"'{path}': {prefix or 'the model'} has a malformed {group}")
        for name, value in entries.items():
            if value is None or (group == "_buffers" and name in skipped):
                continue
            if not isinstance(value, torch.Tensor):
                raise ValueError(f"'{path}': {prefix}{name} is a {type(value).__name__}, not a tensor")
            flat[prefix + name] = value.detach()
    children = state.get("_modules") or {}
    if not isinstance(children, Mapping):
        raise ValueError(f"'{path}': {prefix or 'the model'} has malformed submodules")
    for name, child in children.items():
        if child is None:
            continue
        if not isinstance(child, PickledModule):
            raise ValueError(f"'{path}': submodule {prefix}{name} is a {type(child).__name__}")
        flat.update(_flatten(child, f"{prefix}{name}.", path))
    return flat
