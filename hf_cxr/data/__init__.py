"""Dataset converters: raw ChestX-ray14, CheXpert and Lung-PET-CT-Dx downloads -> `datasets.DatasetDict`.

`datasets` no longer runs loading scripts, so hf-cxr converts the download you have into Arrow (read with
`datasets.load_from_disk`, publish with `push_to_hub`) with a dataset card. One function per dataset,
`convert_<dataset>(root, out_dir, ...)`, returns a `ConversionResult` whose `.dataset` is the `DatasetDict`.
Transforms for training and evaluation with a model's image processor are in `hf_cxr.data.transforms`.
"""

from hf_cxr.data._common import BadFileError, ConversionResult, MissingFilesError, PatientLeakError
from hf_cxr.data.chestxray14 import convert_chestxray14
from hf_cxr.data.chexpert import convert_chexpert
from hf_cxr.data.lung_pet_ct_dx import convert_lung_pet_ct_dx
from hf_cxr.data.storage import IMAGE_FORMATS
from hf_cxr.data.transforms import eval_transform, train_transform

__all__ = [
    "IMAGE_FORMATS",
    "BadFileError",
    "ConversionResult",
    "MissingFilesError",
    "PatientLeakError",
    "convert_chestxray14",
    "convert_chexpert",
    "convert_lung_pet_ct_dx",
    "eval_transform",
    "train_transform",
]
