"""Import torchxrayvision's released classifier weights as hf-cxr models (`hf-cxr import-torchxrayvision`).

`import_torchxrayvision("densenet121-res224-chex", "out/")` reads the weight set's release file from
torchxrayvision's cache folder (`~/.torchxrayvision/models_data/`, where `torchxrayvision.models.get_weights`
puts it) or from an explicit path, and writes a model folder: `model.safetensors`, `config.json`,
`preprocessor_config.json`, the remote code, and a model card. hf-cxr never downloads the file.

Reading the release files safely: the DenseNet files are `torch.save` of a whole `torchxrayvision.models.DenseNet`
(a pickled module tree), the ResNet-50 file a plain state dict. A zip-format file (torch >= 1.6) is read with
`torch.load(weights_only=True)`, whose unpickler builds only allow-listed globals: torch's defaults (tensor and
storage rebuilding, `OrderedDict`, `set`) plus the module classes such a file names (`PICKLED_MODULE_CLASSES`),
each mapped to an inert stand-in (`PickledModule`) that only keeps the saved attributes. torch's weights-only
unpickler cannot read whole modules saved in the legacy format (torch < 1.6, very likely that of the 2019-2020
DenseNet releases): `_LegacyUnpickler` reads those with the same allow-list. No class of torchxrayvision or torch is
instantiated, no code from the file runs, torchxrayvision need not be installed, and a file naming any other global
is refused with `ValueError`. The state dict is then read from the stand-ins' `_parameters`, `_buffers` and
`_modules`.

The table of weight sets (`WEIGHT_SETS`) is the one place hf-cxr records torchxrayvision's facts.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import re
import shutil
import struct
import tempfile
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from hf_cxr.labels import TORCHXRAYVISION_LABELS

TORCHXRAYVISION_VERSION = "1.5.7"  # the release whose `models.py` the table below was read from
RELEASE_URL = "https://github.com/mlmed/torchxrayvision/releases/download/v1/"
DEFAULT_CACHE_DIR = Path("~/.torchxrayvision/models_data")  # torchxrayvision's `utils.get_cache_dir()`
HOMEPAGE = "https://github.com/mlmed/torchxrayvision"
LICENCE = "Apache-2.0"
CITATION = (
    "Cohen JP, Viviano JD, Bertin P, Morrison P, Torabian P, Guarrera M, Lungren MP, Chaudhari A, Brooks R, "
    "Hashir M, Bertrand H. TorchXRayVision: A library of chest X-ray datasets and models. Medical Imaging with Deep "
    "Learning (MIDL) 2022. arXiv:2111.00595. https://github.com/mlmed/torchxrayvision"
)
CITATION_LIMITS = (
    "Cohen JP, Hashir M, Brooks R, Bertrand H. On the limits of cross-domain generalization in automated X-ray "
    "prediction. Medical Imaging with Deep Learning (MIDL) 2020. arXiv:2002.02497."
)
NAN = float("nan")


@dataclass(frozen=True)
class TrainingDataset:
    """A dataset torchxrayvision trained a weight set on, as the model card names it."""

    hub_name: str  # the card's `datasets` metadata entry
    name: str
    homepage: str
    citation: str
    terms: str
    restricted: bool = False  # access or use is bound by an agreement (the card's licence is then "other")


# Keys are torchxrayvision's dataset abbreviations, as in its weight file names. Citations and pages from
# torchxrayvision 1.5.7's `datasets.py` docstrings; terms where the dataset's page states them.
TRAINING_DATASETS: dict[str, TrainingDataset] = {
    "nih": TrainingDataset(
        "chestxray14",
        "NIH ChestX-ray14",
        "https://nihcc.app.box.com/v/ChestXray-NIHCC",
        "Wang X, Peng Y, Lu L, Lu Z, Bagheri M, Summers R. ChestX-ray8: Hospital-scale Chest X-ray Database and "
        "Benchmarks on Weakly-Supervised Classification and Localization of Common Thorax Diseases. IEEE CVPR 2017.",
        "NIH Clinical Center: released for unrestricted use, with attribution",
    ),
    "pc": TrainingDataset(
        "padchest",
        "PadChest (Hospital San Juan de Alicante, BIMCV)",
        "https://bimcv.cipf.es/bimcv-projects/padchest/",
        "Bustos A, Pertusa A, Salinas JM, de la Iglesia-Vayá M. PadChest: A large chest x-ray image dataset with "
        "multi-label annotated reports. Medical Image Analysis 2020 (arXiv:1901.07441).",
        "see the dataset's page for its terms of use",
    ),
    "chex": TrainingDataset(
        "chexpert",
        "Stanford CheXpert",
        "https://stanfordmlgroup.github.io/competitions/chexpert/",
        "Irvin J, Rajpurkar P, Ko M, et al. CheXpert: A Large Chest Radiograph Dataset with Uncertainty Labels and "
        "Expert Comparison. AAAI 2019.",
        "Stanford University School of Medicine CheXpert Dataset Research Use Agreement (no redistribution)",
        restricted=True,
    ),
    "mimic_ch": TrainingDataset(
        "mimic-cxr",
        "MIMIC-CXR (labels from the CheXpert labeler)",
        "https://physionet.org/content/mimic-cxr-jpg/2.0.0/",
        "Johnson AEW, Pollard TJ, Berkowitz S, et al. MIMIC-CXR: A large publicly available database of labeled "
        "chest radiographs. arXiv:1901.07042, 2019.",
        "PhysioNet credentialed access and data use agreement",
        restricted=True,
    ),
    "mimic_nb": TrainingDataset(
        "mimic-cxr",
        "MIMIC-CXR (labels from NegBio)",
        "https://physionet.org/content/mimic-cxr-jpg/2.0.0/",
        "Johnson AEW, Pollard TJ, Berkowitz S, et al. MIMIC-CXR: A large publicly available database of labeled "
        "chest radiographs. arXiv:1901.07042, 2019.",
        "PhysioNet credentialed access and data use agreement",
        restricted=True,
    ),
    "google": TrainingDataset(
        "chestxray14-google-relabels",
        "NIH ChestX-ray14 images with Google's radiologist-adjudicated labels",
        "https://pubs.rsna.org/doi/10.1148/radiol.2019191293",
        "Majkowska A, Mittal S, Steiner DF, et al. Chest Radiograph Interpretation with Deep Learning Models: "
        "Assessment with Radiologist-adjudicated Reference Standards and Population-adjusted Evaluation. "
        "Radiology 2020.",
        "the NIH images' terms, and the labels' own (see the paper)",
    ),
    "openi": TrainingDataset(
        "openi",
        "OpenI (Indiana University chest X-ray collection)",
        "https://openi.nlm.nih.gov/faq",
        "Demner-Fushman D, Kohli MD, Rosenman MB, et al. Preparing a collection of radiology examinations for "
        "distribution and retrieval. JAMIA 2016 (doi:10.1093/jamia/ocv080).",
        "see the dataset's page for its terms of use",
    ),
    "rsna": TrainingDataset(
        "rsna-pneumonia-detection-challenge",
        "RSNA Pneumonia Detection Challenge (Kaggle; NIH ChestX-ray14 images)",
        "https://www.kaggle.com/c/rsna-pneumonia-detection-challenge",
        "Shih G, Wu CC, Halabi SS, et al. Augmenting the National Institutes of Health Chest Radiograph Dataset with "
        "Expert Annotations of Possible Pneumonia. Radiology: Artificial Intelligence 2019 "
        "(doi:10.1148/ryai.2019180041).",
        "the competition's data terms (see its page)",
    ),
    "siim": TrainingDataset(
        "siim-acr-pneumothorax-segmentation",
        "SIIM-ACR Pneumothorax Segmentation (Kaggle)",
        "https://www.kaggle.com/c/siim-acr-pneumothorax-segmentation",
        "SIIM-ACR Pneumothorax Segmentation challenge, Kaggle 2019.",
        "the competition's data terms (see its page)",
    ),
    "vin": TrainingDataset(
        "vindr-cxr",
        "VinDr-CXR",
        "https://physionet.org/content/vindr-cxr/1.0.0/",
        "Nguyen HQ, Lam K, Le LT, et al. VinDr-CXR: An open dataset of chest X-rays with radiologist's annotations. "
        "arXiv:2012.15029, 2020.",
        "see the dataset's page (PhysioNet) for its terms of use",
    ),
}


@dataclass(frozen=True)
class WeightSet:
    """One of torchxrayvision's released classifiers.

    Attributes:
        name: torchxrayvision's weight name (`xrv.models.get_model(name)`).
        architecture: `densenet121` or `resnet50` (`TorchXRayVisionConfig.architecture`).
        file_name: the release file's name (the basename of its `weights_url`).
        outputs: the 18 output names in order; `""` for an output the weight set was not trained on (torchxrayvision
            leaves it in place with a random value).
        op_threshs: the 18 operating points (probabilities; NaN where torchxrayvision has none).
        input_resolution: the side in pixels the weights were trained at.
        datasets: keys of `TRAINING_DATASETS`, from the file name and torchxrayvision's description.

    The DenseNet files are `torch.save` of the whole model, the ResNet-50 file a plain state dict.
    """

    name: str
    architecture: str
    file_name: str
    outputs: tuple[str, ...]
    op_threshs: tuple[float, ...]
    input_resolution: int
    datasets: tuple[str, ...]

    @property
    def url(self) -> str:
        return RELEASE_URL + self.file_name

    @property
    def kept_indices(self) -> list[int]:
        """Indices of the trained outputs (named ones), in output order."""
        return [index for index, label in enumerate(self.outputs) if label]

    @property
    def labels(self) -> list[str]:
        """The findings the weight set was trained on, in torchxrayvision's output order."""
        return [self.outputs[index] for index in self.kept_indices]

    @property
    def thresholds(self) -> dict[str, float]:
        """Finding -> operating point, for the trained findings that have one."""
        return {
            self.outputs[index]: self.op_threshs[index]
            for index in self.kept_indices
            if not math.isnan(self.op_threshs[index])
        }


# torchxrayvision's 18 outputs in its order (`xrv.datasets.default_pathologies`), defined once in hf-cxr's labels.
_XRV_18 = TORCHXRAYVISION_LABELS


def _only(*kept: str) -> tuple[str, ...]:
    """The 18 outputs with every name outside `kept` blanked, as torchxrayvision lists a weight set's labels."""
    unknown = set(kept) - set(_XRV_18)
    if unknown:
        raise ValueError(f"not torchxrayvision outputs: {sorted(unknown)}")
    return tuple(name if name in kept else "" for name in _XRV_18)


_CHEX_OUTPUTS = _only(
    "Atelectasis", "Consolidation", "Pneumothorax", "Edema", "Effusion", "Pneumonia", "Cardiomegaly", "Lung Lesion",
    "Fracture", "Lung Opacity", "Enlarged Cardiomediastinum",
)  # fmt: skip
_D121 = "-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt"

# Source: torchxrayvision 1.5.7, `torchxrayvision/models.py`, `model_urls` (weights_url, labels, op_threshs,
# input_resolution); the training datasets from each file name and the `description` entries.
WEIGHT_SETS: dict[str, WeightSet] = {
    weight_set.name: weight_set
    for weight_set in (
        WeightSet(
            "densenet121-res224-all", "densenet121", f"nih-pc-chex-mimic_ch-google-openi-kaggle{_D121}", _XRV_18,
            (0.07422872, 0.038290843, 0.09814756, 0.0098118475, 0.023601074, 0.0022490358, 0.010060724, 0.103246614,
             0.056810737, 0.026791653, 0.050318155, 0.023985857, 0.01939503, 0.042889766, 0.053369623, 0.035975814,
             0.20204692, 0.05015312),
            224, ("nih", "pc", "chex", "mimic_ch", "google", "openi", "rsna"),
        ),
        WeightSet(
            "densenet121-res224-nih", "densenet121", f"nih{_D121}", (*_XRV_18[:14], "", "", "", ""),
            (0.039117552, 0.0034529066, 0.11396341, 0.0057298196, 0.00045666535, 0.0018880932, 0.012037827,
             0.038744126, 0.0037213727, 0.014730946, 0.016149804, 0.054241467, 0.037198864, 0.0004403434, NAN, NAN,
             NAN, NAN),
            224, ("nih",),
        ),
        WeightSet(
            "densenet121-res224-pc", "densenet121", f"pc{_D121}", (*_XRV_18[:14], "", "Fracture", "", ""),
            (0.031012505, 0.013347598, 0.081435576, 0.001262615, 0.002587246, 0.0035944257, 0.0023071, 0.055412333,
             0.044385884, 0.042766232, 0.043258056, 0.037629247, 0.005658899, 0.0091741895, NAN, 0.026507627, NAN,
             NAN),
            224, ("pc",),
        ),
        WeightSet(
            "densenet121-res224-chex", "densenet121", f"chex{_D121}", _CHEX_OUTPUTS,
            (0.1988969, 0.05710573, NAN, 0.0531293, 0.1435217, NAN, NAN, 0.27212676, 0.07749717, NAN, 0.19712369, NAN,
             NAN, NAN, 0.09932402, 0.09273402, 0.3270967, 0.10888247),
            224, ("chex",),
        ),
        WeightSet(
            "densenet121-res224-rsna", "densenet121", f"kaggle{_D121}", _only("Pneumonia", "Lung Opacity"),
            (NAN, NAN, NAN, NAN, NAN, NAN, NAN, NAN, 0.13486601, NAN, NAN, NAN, NAN, NAN, NAN, NAN, 0.13511065, NAN),
            224, ("rsna",),
        ),
        WeightSet(
            "densenet121-res224-mimic_nb", "densenet121", f"mimic_nb{_D121}", _CHEX_OUTPUTS,
            (0.08558747, 0.011884617, NAN, 0.0040595434, 0.010733786, NAN, NAN, 0.118761964, 0.022924708, NAN,
             0.06358637, NAN, NAN, NAN, 0.022143636, 0.017476924, 0.1258702, 0.014020768),
            224, ("mimic_nb",),
        ),
        WeightSet(
            "densenet121-res224-mimic_ch", "densenet121", f"mimic_ch{_D121}", _CHEX_OUTPUTS,
            (0.09121389, 0.010573786, NAN, 0.005023008, 0.003698257, NAN, NAN, 0.08001232, 0.037242252, NAN,
             0.05006329, NAN, NAN, NAN, 0.019866971, 0.03823637, 0.11303808, 0.0069147074),
            224, ("mimic_ch",),
        ),
        WeightSet(
            "resnet50-res512-all", "resnet50", "pc-nih-rsna-siim-vin-resnet50-test512-e400-state.pt", _XRV_18,
            (0.51570356, 0.50444704, 0.53787947, 0.50723547, 0.5025118, 0.5035252, 0.5038076, 0.51862943, 0.5078151,
             0.50724894, 0.5056339, 0.510706, 0.5053923, 0.5020846, NAN, 0.5080557, 0.5138526, NAN),
            512, ("pc", "nih", "rsna", "siim", "vin"),
        ),
    )
}  # fmt: skip


def weight_set(name: str) -> WeightSet:
    """The table entry of a torchxrayvision weight name; `ValueError` listing the names for any other."""
    if name not in WEIGHT_SETS:
        raise ValueError(f"unknown torchxrayvision weights {name!r}; choose one of {sorted(WEIGHT_SETS)}")
    return WEIGHT_SETS[name]


# --------------------------------------------------------------------------------------------- reading the files


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


# ------------------------------------------------------------------------------------------------- converting


def weights_path(
    name: str, weights_file: str | os.PathLike[str] | None = None, cache_dir: str | os.PathLike[str] | None = None
) -> Path:
    """Where the release file of weight set `name` is: `weights_file` when given, else `cache_dir` (default
    torchxrayvision's `~/.torchxrayvision/models_data/`) / its file name.

    Raises `FileNotFoundError` in one line naming the path looked for and how to get the file (hf-cxr never
    downloads it).
    """
    entry = weight_set(name)
    if weights_file is not None:
        path = Path(weights_file).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"--weights-file '{path}' does not exist")
        return path
    path = Path(cache_dir if cache_dir is not None else DEFAULT_CACHE_DIR).expanduser() / entry.file_name
    if not path.is_file():
        raise FileNotFoundError(
            f"torchxrayvision weights {name!r} not found at '{path}'; hf-cxr never downloads them: run "
            f"`python -c \"import torchxrayvision as xrv; xrv.models.get_model('{name}')\"` (torchxrayvision saves "
            f"the file there) or download {entry.url} to that path, or pass --weights-file PATH"
        )
    return path


def convert_state_dict(
    entry: WeightSet, source: Mapping[str, torch.Tensor], model: torch.nn.Module, path: Path
) -> dict[str, torch.Tensor]:
    """torchxrayvision's state dict -> `model`'s (a `TorchXRayVisionForImageClassification` of `entry`'s config).

    The backbone keys carry over under `torchxrayvision.backbone.` (timm's DenseNet-121 and ResNet-50 use
    torchxrayvision's and torchvision's names); the classifier (`classifier.*` for the DenseNet, `fc.*` for the
    ResNet) keeps only the rows of the trained outputs. A saved `op_threshs` buffer is dropped (the thresholds come
    from the table, as torchxrayvision sets them). Raises `ValueError` naming the file when keys or shapes differ.
    """
    head = "classifier." if entry.architecture == "densenet121" else "fc."
    expected = model.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    for key, value in source.items():
        if key == "op_threshs" or key.startswith(head):
            continue
        mapped[f"torchxrayvision.backbone.{key}"] = value
    weight, bias = source.get(head + "weight"), source.get(head + "bias")
    outputs = len(entry.outputs)
    if weight is None or bias is None or weight.ndim != 2 or weight.shape[0] != outputs or bias.shape != (outputs,):
        got = "missing" if weight is None or bias is None else f"{tuple(weight.shape)} / {tuple(bias.shape)}"
        raise ValueError(
            f"'{path}' is not a {entry.name} file: its {head}weight/bias should have {outputs} outputs, got {got}"
        )
    kept = torch.tensor(entry.kept_indices)
    mapped["classifier.weight"] = weight.index_select(0, kept).clone()
    mapped["classifier.bias"] = bias.index_select(0, kept).clone()
    missing = sorted(set(expected) - set(mapped))
    unexpected = sorted(set(mapped) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"'{path}' is not a {entry.name} file ({entry.architecture}): {len(missing)} weights missing "
            f"{missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}"
        )
    wrong = [key for key, value in mapped.items() if tuple(value.shape) != tuple(expected[key].shape)]
    if wrong:
        key = wrong[0]
        raise ValueError(
            f"'{path}' is not a {entry.name} file: {key} has shape {tuple(mapped[key].shape)}, expected "
            f"{tuple(expected[key].shape)} ({len(wrong)} tensors differ)"
        )
    return mapped


def build_imported_model(name: str, state_dict: Mapping[str, torch.Tensor], path: Path) -> Any:
    """A `TorchXRayVisionForImageClassification` (eval mode) holding weight set `name`'s converted weights: its
    trained labels, its operating points as `decision_thresholds`, its resolution as `image_size`."""
    from hf_cxr.modeling.torchxrayvision import TorchXRayVisionConfig, TorchXRayVisionForImageClassification

    entry = weight_set(name)
    config = TorchXRayVisionConfig.from_preset(
        entry.architecture,
        torchxrayvision_weights=entry.name,
        image_size=entry.input_resolution,
        labels=entry.labels,
        decision_thresholds=entry.thresholds,
    )
    model = TorchXRayVisionForImageClassification(config)
    model.load_state_dict(convert_state_dict(entry, state_dict, model, path), strict=True)
    return model.eval()


def check_out_dir(out_dir: str | os.PathLike[str], overwrite: bool) -> Path:
    """The output folder, checked before any work: `FileExistsError` when it is a file, or a non-empty folder and
    `overwrite` is not set."""
    out = Path(out_dir).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out '{out}' is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"--out '{out}' is not empty; choose another folder or pass --overwrite to replace it")
    return out


def import_torchxrayvision(
    weights: str,
    out_dir: str | os.PathLike[str],
    weights_file: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    repo_id: str | None = None,
) -> Path:
    """Convert torchxrayvision weight set `weights` (e.g. `"densenet121-res224-chex"`) into an hf-cxr model folder.

    Args:
        weights: a name of `WEIGHT_SETS`.
        out_dir: the folder to write: `model.safetensors`, `config.json`, `preprocessor_config.json`, the remote
            code (`*.py`) and `README.md` (the model card). Written in a hidden sibling folder and renamed when
            complete.
        weights_file: the release file; default `cache_dir` / its file name.
        cache_dir: torchxrayvision's cache folder (default `~/.torchxrayvision/models_data/`).
        overwrite: replace a non-empty `out_dir`.
        repo_id: the id the card's code examples name (default: the folder's name); `hf-cxr push` renders the card
            again with the real id.

    Returns the folder. Raises `ValueError` (unknown weights, a file that is not that weight set or is refused by
    the safe loader), `FileExistsError` (`out_dir` taken) and `FileNotFoundError` (no release file: the message names
    the path looked for and how to get the file).
    """
    entry = weight_set(weights)
    out = check_out_dir(out_dir, overwrite)
    path = weights_path(entry.name, weights_file, cache_dir)
    model = build_imported_model(entry.name, load_release_file(path), path)

    from hf_cxr.hub import render_model_card
    from hf_cxr.modeling.torchxrayvision import TorchXRayVisionImageProcessor

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        model.save_pretrained(staging)
        TorchXRayVisionImageProcessor(size=entry.input_resolution).save_pretrained(staging)
        render_model_card(staging, repo_id or out.name).save(staging / "README.md")
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


# ------------------------------------------------------------------------------------------------- model card


@dataclass(frozen=True)
class CardFacts:
    """What a torchxrayvision model's card states beyond the generic fields (`hf_cxr.hub.render_model_card`)."""

    fields: dict[str, str]  # template fields, overriding the generic ones of the same name
    datasets: list[str]  # the card's `datasets` metadata (empty: the generic rule applies)
    license: str | None  # the card's default licence (None: the generic rule applies)
    license_name: str | None = None
    license_link: str | None = None


def card_facts(config: Mapping[str, Any], training_section: str, trained_further: bool) -> CardFacts:
    """The card facts of a saved torchxrayvision model (`config`: its config.json). For a model imported from a
    weight set: its provenance, training datasets and their terms, and a thresholds table saying which values are
    torchxrayvision's operating points. For one built fresh: the generic training and thresholds sections.
    `trained_further`: the folder records an hf-cxr training run (then its `training_section` is kept too)."""
    name = config.get("torchxrayvision_weights")
    architecture = {"densenet121": "DenseNet-121", "resnet50": "ResNet-50"}.get(config.get("architecture"), "")
    if not name:
        provenance = (
            f"This model has torchxrayvision's {architecture or 'classifier'} architecture but was not imported from "
            "torchxrayvision's released weights: it was built with hf-cxr (`torchxrayvision_weights` is unset in its "
            "config)."
        )
        return CardFacts({"provenance": provenance}, [], None)
    entry = weight_set(str(name))
    datasets = [TRAINING_DATASETS[key] for key in entry.datasets]
    provenance = (
        f"Converted by `hf-cxr import-torchxrayvision {entry.name}` from torchxrayvision's release file "
        f'`{entry.file_name}` ({entry.url}): the weights of `xrv.models.get_model("{entry.name}")`, converted to '
        f"safetensors without change except that the classifier keeps only the {len(entry.labels)} outputs this weight "
        f"set was trained on (torchxrayvision's other outputs are untrained). The weight-set facts (file, labels, "
        f"operating points, resolution) are those of torchxrayvision {TORCHXRAYVISION_VERSION}."
    )
    lines = [
        f"Trained by torchxrayvision's authors, not by hf-cxr, at {entry.input_resolution} px, on:",
        "",
        *[f"- {dataset.name} ({dataset.homepage})" for dataset in dict.fromkeys(datasets)],
        "",
        "torchxrayvision's public training script (`scripts/train_model.py`) holds out part of each dataset at "
        "random by image (not by patient), trains on the rest with random affine augmentation (rotation up to 45 "
        "degrees, translation 15 %, scale 0.85-1.15) and keeps the epoch with the best mean validation AUC. The "
        "release file does not record the exact data, views and splits of this weight set; the papers cited below "
        "describe them.",
    ]
    if trained_further:
        lines += ["", "After the import, this folder was trained further with hf-cxr:", "", training_section]
    restricted = [dataset for dataset in datasets if dataset.restricted]
    license_name = license_link = None
    licence = "apache-2.0"
    if restricted:
        licence = "other"
        license_name = "-".join(dict.fromkeys(_licence_slug(dataset) for dataset in restricted))
        license_link = restricted[0].homepage
    attribution = [
        f"- The weights: torchxrayvision ({HOMEPAGE}), {LICENCE}. Please cite: {CITATION}",
        *[f"- {dataset.name}: {dataset.terms}. Please cite: {dataset.citation}" for dataset in dict.fromkeys(datasets)],
    ]
    fields = {
        "provenance": provenance,
        "training_data": "\n".join(lines),
        "thresholds": _thresholds_table(config, entry),
        "data_attribution": "\n".join(attribution),
    }
    hub_names = list(dict.fromkeys(dataset.hub_name for dataset in datasets))
    return CardFacts(fields, hub_names, licence, license_name, license_link)


def _licence_slug(dataset: TrainingDataset) -> str:
    return "chexpert-research-use" if dataset.hub_name == "chexpert" else "physionet-credentialed-data-use"


def _thresholds_table(config: Mapping[str, Any], entry: WeightSet) -> str:
    """One row per finding: the stored threshold and whether it is torchxrayvision's operating point."""
    stored = config.get("decision_thresholds") or {}
    id2label = config.get("id2label") or {}
    labels = [id2label[key] for key in sorted(id2label, key=int)]
    operating = entry.thresholds
    rows = ["| finding | threshold | what it is |", "|---|---|---|"]
    for label in labels:
        xrv = operating.get(label)
        if label in stored:
            value = float(stored[label])
            same = xrv is not None and math.isclose(value, xrv, rel_tol=0, abs_tol=1e-9)
            what = (
                "torchxrayvision's operating point (`op_threshs`)"
                if same
                else (
                    "stored in the config; not torchxrayvision's operating point"
                    + (f" ({xrv:.4g})" if xrv is not None else "")
                )
            )
            rows.append(f"| {label} | {value:.4g} | {what} |")
        else:
            rows.append(f"| {label} | 0.5 | torchxrayvision has no operating point for it; 0.5 applies |")
    return "\n".join(rows)


__all__ = [
    "PICKLED_MODULE_CLASSES",
    "TRAINING_DATASETS",
    "WEIGHT_SETS",
    "CardFacts",
    "PickledModule",
    "TrainingDataset",
    "WeightSet",
    "card_facts",
    "convert_state_dict",
    "import_torchxrayvision",
    "load_release_file",
    "weight_set",
    "weights_path",
]
