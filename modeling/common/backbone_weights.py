"""Pretrained timm weights for hf-cxr's backbones: the `*backbone_weights` config fields.

A field holds `None` (random initialisation, the default), `True` (timm's default pretrained tag of the backbone),
a timm pretrained tag (`"resnet50.a1_in1k"`, or `"a1_in1k"` for the configured backbone) or a local `.safetensors`
file. The weights are read once, when a model is built from its config (`hf_cxr.build_model`, a recipe's
`model.overrides`, `train.py --backbone-weights`, or the model class called on a config): timm creates the backbone
with `pretrained=True` and does the loading itself (the classifier of the pretrained model is dropped, the first
convolution of a 1-channel model is the pretrained one summed over its three input channels, position tables are
resized to the configured image size). A Hub tag is the file `model.safetensors` of the Hub repo timm registers for
it (`timm/<arch>.<tag>`), fetched through `huggingface_hub`, so `HF_HUB_OFFLINE=1` works once it is in the Hugging
Face cache. Only safetensors files are read.

`from_pretrained` of a saved hf-cxr model never reads them again: the backbone's values are in the model's own
`model.safetensors`. Each architecture's `from_pretrained` runs inside `loading_saved_weights()`, and a backbone
created there (or on the meta device) is created with random initialisation, to be overwritten by the saved tensors.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import re
from collections.abc import Iterator
from typing import Any

import timm
import torch
from torch import nn

# Set while `from_pretrained` builds a saved model: its backbone tensors come from its own file.
_LOADING_SAVED_WEIGHTS = contextvars.ContextVar("hf_cxr_loading_saved_weights", default=False)
# The only weight file timm is asked for on the Hub (every `timm/` repo has one): never a pickled checkpoint.
HUB_FILENAME = "model.safetensors"
_PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".pkl", ".npz", ".h5", ".tar")
# How timm's `load_pretrained` reports the checkpoint keys it could not place (it loads with strict=False once it
# has dropped the pretrained classifier, so it logs them instead of raising).
_KEYS_REPORT = re.compile(r"^(Missing|Unexpected) keys \((?P<keys>.*)\) (?:discovered|found) while loading")


@contextlib.contextmanager
def loading_saved_weights() -> Iterator[None]:
    """Within this context, models are being built to receive saved weights: no backbone weights are read."""
    token = _LOADING_SAVED_WEIGHTS.set(True)
    try:
        yield
    finally:
        _LOADING_SAVED_WEIGHTS.reset(token)


def check_backbone_weights(value: Any, where: str) -> None:
    """Raise `ValueError` (naming `where`, e.g. `MAMSFConfig.backbone_weights`) unless `value` has one of the
    accepted forms. Whether a tag exists and a file is there is checked when the model is built, so that a saved
    config loads on any machine."""
    if value is None or isinstance(value, bool):
        return
    if not isinstance(value, str) or not value.strip() or value != value.strip():
        raise ValueError(f"{where} must be None, true, a timm pretrained tag (e.g. 'resnet50.a1_in1k') or a local "
                         f".safetensors file, got {value!r}")  # fmt: skip
    lowered = value.lower()
    if lowered.endswith(".safetensors"):
        return
    if lowered.endswith(_PICKLE_SUFFIXES):
        raise ValueError(f"{where}: a local weight file must be .safetensors (hf-cxr reads no pickled checkpoints), "
                         f"got {value!r}")  # fmt: skip
    if "/" in value or os.sep in value:
        raise ValueError(f"{where}: {value!r} is neither a .safetensors file nor a timm tag; give the tag (e.g. "
                         "'resnet50.a1_in1k', whose Hub repo is timm/resnet50.a1_in1k) or the file's path")  # fmt: skip


def create_backbone(model_name: str, weights: Any, where: str, custom_fields: str, **kwargs: Any) -> nn.Module:
    """`timm.create_model(model_name, **kwargs)`, with pretrained weights when `weights` (a `*backbone_weights` value
    of the config field `where`) asks for them and the model is not being built for `from_pretrained`.

    `custom_fields` names the config fields that change the backbone's architecture (for the message when the
    weights do not fit it). Raises `ValueError` naming `where` for an unknown tag, a tag of another architecture,
    a backbone timm has no weights for, a missing local file, and weights that do not fit the backbone (a tensor of
    another shape, a layer the weights lack or a layer of the weights the backbone lacks), also for a value of the
    wrong form (`check_backbone_weights`) and for timm weights that are not on the Hub; `FileNotFoundError` when
    a Hub tag is neither in the Hugging Face cache nor downloadable (e.g. with `HF_HUB_OFFLINE=1`) or its Hub repo
    has no `model.safetensors`. timm's own error passes through unchanged when the backbone cannot be built even
    without weights (a wrong `model_name` or keyword argument).
    """
    if weights is None or weights is False or _LOADING_SAVED_WEIGHTS.get() or _building_on_meta_device():
        return timm.create_model(model_name, pretrained=False, **kwargs)
    check_backbone_weights(weights, where)
    arch, arch_tag = timm.models.split_model_name_tag(model_name)
    repo = None
    if isinstance(weights, str) and weights.lower().endswith(".safetensors"):
        path = os.path.abspath(os.path.expanduser(weights))
        if not os.path.isfile(path):
            raise ValueError(f"{where}: the weight file '{weights}' does not exist")
        name, label = model_name, f"'{weights}'"
        overlay: dict[str, Any] = {"file": path, "hf_hub_id": None, "url": ""}
    else:
        name = _pretrained_name(arch, arch_tag, weights, where)
        repo = timm.models.get_pretrained_cfg(name).hf_hub_id
        if not repo:
            raise ValueError(f"{where}: timm's weights {name} are not on the Hugging Face Hub; give them as a local "
                             ".safetensors file")  # fmt: skip
        label, overlay = f"{name} (Hub repo {repo})", {"hf_hub_filename": HUB_FILENAME}

    def misfit(problem: str) -> ValueError:
        remedy = (
            f"the file must hold weights of {arch} as configured"
            if repo is None
            else f"timm's weights need its standard {arch}: leave {custom_fields} at the published architecture's "
            "values (the tiny presets change them)"
        )
        return ValueError(
            f"{where}: {label} does not fit the backbone {arch} as configured: {problem}; {remedy}, or set the "
            "weights to None"
        )

    from huggingface_hub import constants
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        with _TimmLoadReport() as report:
            backbone = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    except LocalEntryNotFoundError:
        offline = " (HF_HUB_OFFLINE is set)" if constants.HF_HUB_OFFLINE else ""
        raise FileNotFoundError(
            f"{where}: the weights {label} are not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and the Hub "
            f"cannot be reached{offline}; `hf download {repo} {HUB_FILENAME}` puts them there"
        ) from None
    except EntryNotFoundError:
        raise FileNotFoundError(f"{where}: the Hub repo {repo} has no {HUB_FILENAME}") from None
    except Exception as error:  # timm refused the weights (or the configuration itself is wrong)
        if not _builds_without_weights(model_name, kwargs):
            raise
        raise misfit(_loader_failure(error)) from None
    unplaced = report.unplaced(timm.models.get_pretrained_cfg(name))
    if unplaced:
        raise misfit(unplaced)
    return backbone


def _pretrained_name(arch: str, arch_tag: str, weights: bool | str, where: str) -> str:
    """`arch.tag`, the pretrained timm name `weights` (`True` or a tag) stands for, checked in timm's registry."""
    if weights is True:
        tag = arch_tag or getattr(timm.models.get_pretrained_cfg(arch), "tag", None) or ""
    else:
        weights_arch, tag = timm.models.split_model_name_tag(weights) if "." in weights else (arch, weights)
        if weights_arch != arch:
            raise ValueError(f"{where}: {weights!r} are weights of {weights_arch}, but the backbone is {arch}; set the "
                             f"backbone to {weights_arch} too, or choose one of {arch}'s: "
                             f"{timm.models.list_pretrained(arch + '.*') or 'timm has none'}")  # fmt: skip
    name = f"{arch}.{tag}" if tag else arch
    if not timm.models.is_model_pretrained(name):
        known = timm.models.list_pretrained(arch + ".*")
        if known:
            raise ValueError(f"{where}: timm has no pretrained weights {name!r}; {arch}'s are {known}")
        hint = (
            "; tf_efficientnetv2_s (Google's release, TF 'same' padding) has them" if arch == "efficientnetv2_s" else ""
        )
        raise ValueError(f"{where}: timm has no pretrained weights for {arch}{hint}")
    return name


def _builds_without_weights(model_name: str, kwargs: dict[str, Any]) -> bool:
    """Whether timm builds the backbone as configured with random weights (then a failure with weights is theirs)."""
    try:
        timm.create_model(model_name, pretrained=False, **kwargs)
    except Exception:
        return False
    return True


def _loader_failure(error: Exception) -> str:
    """timm's refusal in one line: the first tensor of another shape (and how many more), or the error itself."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    mismatches = [line.rstrip(".") for line in lines if line.startswith("size mismatch")]
    if mismatches:
        return mismatches[0] + (f" (and {len(mismatches) - 1} more)" if len(mismatches) > 1 else "")
    if lines:
        return lines[0].rstrip(".")
    frame = error.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    where = f" in timm's {frame.tb_frame.f_code.co_name}" if frame is not None else ""
    return f"{type(error).__name__}{where} (a tensor of another shape)"


def _building_on_meta_device() -> bool:
    """Whether tensors are being created on the meta device (`from_pretrained`'s empty model, accelerate's
    `init_empty_weights`): there is nothing to load weights into."""
    return torch.empty(0).device.type == "meta"


class _TimmLoadReport(logging.Filter):
    """Collects (and keeps off the log) the keys timm reports it could not place while loading pretrained weights
    (`Missing keys (...)`, `Unexpected keys (...)`); timm's other messages show as they did."""

    def __init__(self) -> None:
        super().__init__()
        self.logger = logging.getLogger("timm.models._builder")
        self.missing: list[str] = []
        self.unexpected: list[str] = []

    def __enter__(self) -> _TimmLoadReport:
        self.shown_level = self.logger.getEffectiveLevel()
        self.own_level = self.logger.level
        self.logger.addFilter(self)
        if self.shown_level > logging.INFO:
            self.logger.setLevel(logging.INFO)  # the missing keys are reported at INFO
        return self

    def __exit__(self, *exc: object) -> None:
        self.logger.removeFilter(self)
        self.logger.setLevel(self.own_level)

    def filter(self, record: logging.LogRecord) -> bool:
        match = _KEYS_REPORT.match(record.getMessage())
        if match:
            keys = [key.strip() for key in match["keys"].split(",") if key.strip()]
            (self.missing if match[1] == "Missing" else self.unexpected).extend(keys)
            return False  # `unplaced` turns the report into an error, or it lists only the dropped classifier
        return record.levelno >= self.shown_level  # pass on only what the logger showed before

    def unplaced(self, pretrained_cfg: Any) -> str:
        """What the backbone lacks or the checkpoint has no place for, beyond the pretrained classifier that timm
        drops on purpose (and the rest of its head, e.g. the norm before the classifier); empty when all fit."""
        classifiers = getattr(pretrained_cfg, "classifier", None)
        classifiers = (classifiers,) if isinstance(classifiers, str) else tuple(classifiers or ())
        heads = tuple(f"{name.rpartition('.')[0] or name}." for name in classifiers)
        missing = [key for key in self.missing if not key.startswith(tuple(f"{name}." for name in classifiers))]
        unexpected = [key for key in self.unexpected if not key.startswith(heads)]
        missing, unexpected = sorted(missing, key=_batch_count_last), sorted(unexpected, key=_batch_count_last)
        parts = []
        if missing:
            parts.append(f"{len(missing)} of its tensors are not in the weights (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} tensors of the weights have no place in it (e.g. {unexpected[0]})")
        return "; ".join(parts)


def _batch_count_last(key: str) -> bool:
    """Sort key naming a weight before a BatchNorm step counter in messages."""
    return key.endswith("num_batches_tracked")
