"""`hf-cxr convert <dataset>`: turn a raw download into a `datasets` folder (see `hf_cxr.data`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from hf_cxr.commands import at_least
from hf_cxr.data.chestxray14 import DEFAULT_IMAGE_SIZE as NIH_SIZE
from hf_cxr.data.chestxray14 import DEFAULT_VALIDATION_FRACTION, convert_chestxray14
from hf_cxr.data.chexpert import DEFAULT_IMAGE_SIZE as CHEXPERT_SIZE
from hf_cxr.data.chexpert import UNCERTAIN_POLICIES, convert_chexpert
from hf_cxr.data.lung_pet_ct_dx import DEFAULT_FRACTIONS, TASKS, convert_lung_pet_ct_dx
from hf_cxr.data.storage import IMAGE_FORMATS


def _image_size(text: str) -> int | None:
    """A positive size, or 0 / 'original' to keep the images' own size."""
    return None if text.lower() in ("0", "original", "none") else at_least(1)(text)


def _common(parser: argparse.ArgumentParser, image_size: int | None = None, seed: bool = True) -> None:
    parser.add_argument("--root", type=Path, required=True, help="the raw download's folder")
    parser.add_argument("--out", type=Path, required=True, help="output folder (written atomically)")
    if image_size is not None:
        parser.add_argument(
            "--image-size",
            type=_image_size,
            default=image_size,
            help=f"stored shorter side in px (default {image_size}; 0 keeps the original size); for training, the "
            "size the recipe trains at (e.g. 224): training reads images at the model's size before augmenting",
        )
        parser.add_argument(
            "--image-format",
            choices=IMAGE_FORMATS,
            default="png",
            help="png: portable PNG (JPEG for resized JPEG sources), the default; raw: uncompressed image files, "
            "larger on disk and several times faster to read. Training and evaluation read either.",
        )
    parser.add_argument(
        "--num-proc",
        type=at_least(1),
        default=None,
        help="worker processes that read, resize and encode (default: all in the main process)",
    )
    if seed:  # CheXpert keeps Stanford's splits: nothing is drawn at random
        parser.add_argument("--seed", type=int, default=0, help="seed of the patient-level split")
    parser.add_argument(
        "--skip-bad", action="store_true", help="skip unreadable files (each is listed in the card) instead of failing"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("convert", help="convert a raw dataset download into a Hugging Face dataset")
    datasets_parsers = parser.add_subparsers(dest="dataset", required=True)

    nih = datasets_parsers.add_parser("chestxray14", help="NIH ChestX-ray14")
    _common(nih, NIH_SIZE)
    nih.add_argument(
        "--validation-fraction",
        type=float,
        default=DEFAULT_VALIDATION_FRACTION,
        help=f"share of train_val patients held out for validation (default {DEFAULT_VALIDATION_FRACTION})",
    )
    nih.add_argument(
        "--split-protocol",
        choices=["official", "random-patient"],
        default="official",
        help="official: NIH's test list is the test split; random-patient: every listed image (every image of the "
        "table when the download has no lists) re-split by patient (seeded), labelled as such in the card",
    )
    nih.add_argument(
        "--test-fraction",
        type=float,
        default=0.2,
        help="share of patients in test with --split-protocol random-patient",
    )
    nih.set_defaults(func=_run_chestxray14)

    chexpert = datasets_parsers.add_parser("chexpert", help="Stanford CheXpert (-small or full)")
    _common(chexpert, CHEXPERT_SIZE, seed=False)
    chexpert.add_argument(
        "--uncertain", choices=UNCERTAIN_POLICIES, default="ignore", help="what uncertain (-1) labels become"
    )
    chexpert.add_argument("--frontal-only", action="store_true", help="leave out lateral views")
    chexpert.set_defaults(func=_run_chexpert)

    lung = datasets_parsers.add_parser("lung-pet-ct-dx", help="TCIA Lung-PET-CT-Dx (CT series)")
    _common(lung)
    lung.add_argument("--clinical", type=Path, required=True, help="clinical table (.xlsx or .csv)")
    lung.add_argument("--task", choices=sorted(TASKS), default="abeg", help="ag: A vs G; abeg: four classes")
    lung.add_argument("--annotations", type=Path, default=None, help="annotation XML folder (default: under --root)")
    lung.add_argument("--validation-fraction", type=float, default=DEFAULT_FRACTIONS["validation"])
    lung.add_argument("--test-fraction", type=float, default=DEFAULT_FRACTIONS["test"])
    lung.set_defaults(func=_run_lung)


def _done(result: Any) -> int:
    print(f"wrote {result.out_dir} ({', '.join(f'{k}: {v.num_rows}' for k, v in result.dataset.items())})")
    if result.skipped:
        print(f"{len(result.skipped)} files skipped, listed in {result.out_dir / 'skipped_files.txt'}")
    return 0


def _run_chestxray14(args: argparse.Namespace) -> int:
    return _done(
        convert_chestxray14(
            args.root,
            args.out,
            image_size=args.image_size,
            image_format=args.image_format,
            num_proc=args.num_proc,
            seed=args.seed,
            validation_fraction=args.validation_fraction,
            skip_bad=args.skip_bad,
            overwrite=args.overwrite,
            split_protocol=args.split_protocol.replace("-", "_"),
            test_fraction=args.test_fraction,
        )
    )


def _run_chexpert(args: argparse.Namespace) -> int:
    return _done(
        convert_chexpert(
            args.root,
            args.out,
            uncertain=args.uncertain,
            frontal_only=args.frontal_only,
            image_size=args.image_size,
            image_format=args.image_format,
            num_proc=args.num_proc,
            skip_bad=args.skip_bad,
            overwrite=args.overwrite,
        )
    )


def _run_lung(args: argparse.Namespace) -> int:
    return _done(
        convert_lung_pet_ct_dx(
            args.root,
            args.clinical,
            args.out,
            task=args.task,
            annotations_dir=args.annotations,
            seed=args.seed,
            validation_fraction=args.validation_fraction,
            test_fraction=args.test_fraction,
            num_proc=args.num_proc,
            skip_bad=args.skip_bad,
            overwrite=args.overwrite,
        )
    )
