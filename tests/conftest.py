"""Shared test setup: offline Hub, small thread count, paths to the real fixtures."""

import os

# Read at import time by huggingface_hub/transformers: set before anything imports them.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

from pathlib import Path

import datasets
import pytest
import torch

from hf_cxr.sample import load_labelled_folder

FIXTURES = Path(__file__).parent / "fixtures"
NIH_DIR = FIXTURES / "nih_cxr14"


# Under pytest-xdist every worker shares the cores: one torch thread per worker's share, not one per core each.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files of only `slow` tests first, then files holding some: pytest-xdist hands out tests in collection order,
    so the multi-minute runs start at once and the quick tests fill the other workers (which take work from a busy
    one), rather than one long test starting last and running alone. The order within a file is kept."""
    some_slow = {item.path for item in items if item.get_closest_marker("slow")}
    some_quick = {item.path for item in items if not item.get_closest_marker("slow")}
    items.sort(key=lambda item: (item.path not in some_slow, item.path in some_quick))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def nih_images() -> list[Path]:
    """15 real NIH ChestX-ray14 PNGs (256 px, 8-bit grey)."""
    return sorted((NIH_DIR / "images").glob("*.png"))


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory) -> Path:
    """The 15 real NIH fixture radiographs as a converted-style DatasetDict (10 train / 5 validation)."""
    folder = tmp_path_factory.mktemp("data") / "nih"
    parts = load_labelled_folder(NIH_DIR).train_test_split(test_size=5, seed=0)
    datasets.DatasetDict({"train": parts["train"], "validation": parts["test"]}).save_to_disk(str(folder))
    return folder
