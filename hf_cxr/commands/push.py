"""`hf-cxr push`: publish a saved model (weights, config, processor, remote code, card, report) to the Hub."""

from __future__ import annotations

import argparse
from pathlib import Path


def _run(args: argparse.Namespace) -> int:
    from hf_cxr.hub import push_model

    result = push_model(
        args.model,
        args.repo_id,
        private=args.private,
        report_dir=args.report,
        dry_run=args.dry_run,
        out_dir=args.out,
        recipe=args.recipe,
        training_dataset=args.training_dataset,
        dataset_id=args.dataset_id,
        license=args.license,
    )
    if args.dry_run:
        print(f"dry run: nothing uploaded; the folder that would be uploaded to {args.repo_id} is {result.folder}/")
    else:
        print(f"uploaded to {result.repo_url} ({result.commit_url})")
    for name in result.files:
        print(f"  {name}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("push", help="upload a saved model with its card and evaluation report to the Hub")
    parser.add_argument("--model", required=True, type=Path, help="saved model folder (save_pretrained output)")
    parser.add_argument("--repo-id", required=True, help="ORG/NAME on the Hub")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--report", type=Path, default=None, help="report folder of `hf-cxr evaluate` (card metrics)")
    parser.add_argument("--dry-run", action="store_true", help="write the upload folder to --out and upload nothing")
    parser.add_argument("--out", type=Path, default=None, help="where --dry-run writes the folder")
    parser.add_argument("--recipe", type=Path, default=None, help="training recipe YAML (default: MODEL/recipe.yaml)")
    parser.add_argument(
        "--training-dataset",
        default=None,
        help="chestxray14, chexpert, lung_pet_ct_dx or a Hub id (default: from labels)",
    )
    parser.add_argument("--dataset-id", default=None, help="Hub id of the evaluation dataset for the model-index")
    parser.add_argument("--license", default=None, help="model licence (default apache-2.0; CheXpert-trained: other)")
    parser.set_defaults(func=_run)
