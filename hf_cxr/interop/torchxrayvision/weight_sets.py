"""torchxrayvision's released classifiers as hf-cxr records them: `WEIGHT_SETS` (per weight set its release
file, architecture, outputs, operating points, resolution and training datasets, read from torchxrayvision
1.5.7's `models.py`), the datasets those were trained on (`TRAINING_DATASETS`, with pages, citations and terms), and
torchxrayvision's own facts (release URL, cache folder, licence, citation). The one place hf-cxr records
torchxrayvision's facts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

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
