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

The package by job: `weight_sets` (the table and the datasets it names), `release_files` (reading a release file
with the restricted unpickler), `convert` (the state-dict mapping and `import_torchxrayvision`, which writes the
folder) and `card` (what the model card says about an imported weight set).
"""

from __future__ import annotations

from hf_cxr.interop.torchxrayvision.card import CardFacts, card_facts
from hf_cxr.interop.torchxrayvision.convert import (
    build_imported_model,
    check_out_dir,
    convert_state_dict,
    import_torchxrayvision,
    weights_path,
)
from hf_cxr.interop.torchxrayvision.release_files import PICKLED_MODULE_CLASSES, PickledModule, load_release_file
from hf_cxr.interop.torchxrayvision.weight_sets import (
    CITATION,
    CITATION_LIMITS,
    DEFAULT_CACHE_DIR,
    HOMEPAGE,
    LICENCE,
    RELEASE_URL,
    TORCHXRAYVISION_VERSION,
    TRAINING_DATASETS,
    WEIGHT_SETS,
    TrainingDataset,
    WeightSet,
    weight_set,
)

__all__ = [
    "CITATION",
    "CITATION_LIMITS",
    "DEFAULT_CACHE_DIR",
    "HOMEPAGE",
    "LICENCE",
    "PICKLED_MODULE_CLASSES",
    "RELEASE_URL",
    "TORCHXRAYVISION_VERSION",
    "TRAINING_DATASETS",
    "WEIGHT_SETS",
    "CardFacts",
    "PickledModule",
    "TrainingDataset",
    "WeightSet",
    "build_imported_model",
    "card_facts",
    "check_out_dir",
    "convert_state_dict",
    "import_torchxrayvision",
    "load_release_file",
    "weight_set",
    "weights_path",
]
