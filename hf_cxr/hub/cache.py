"""The local Hugging Face cache: `add_to_cache` lays a model folder out there as if its repo id had been
downloaded, so that a folder can be loaded offline by the id it will have on the Hub before it is uploaded.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def add_to_cache(folder: str | os.PathLike[str], repo_id: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Lay a model folder out in the Hugging Face cache as if `repo_id` had been downloaded, so that
    `from_pretrained(repo_id)`, `pipeline(model=repo_id)` and `hf-cxr predict --model repo_id` load it offline:
    a way to try a folder by the repo id it will have (e.g. `hf-cxr push --dry-run --out DIR`) before it is on the
    Hub. Every file of `folder` (sub-folders included) is copied into `snapshots/<commit>/`, where the commit is a
    hash of the files' names and contents, and `refs/main` points at it. `cache_dir` defaults to the cache
    huggingface_hub uses (`HF_HUB_CACHE`). Returns the snapshot folder; raises `FileNotFoundError` when `folder`
    holds no `config.json`."""
    import hashlib

    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"'{folder}' is not a saved model folder (no config.json)")
    files = sorted(path for path in folder.rglob("*") if path.is_file())
    digest = hashlib.sha1()
    for path in files:
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    repo = Path(cache_dir or constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model")
    snapshot = repo / "snapshots" / digest.hexdigest()
    for path in files:
        target = snapshot / path.relative_to(folder)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(digest.hexdigest())
    return snapshot
