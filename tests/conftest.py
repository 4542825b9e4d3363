"""Shared test setup: offline Hub, small thread count, paths to the real fixtures."""

import os

# Read at import time by huggingface_hub/transformers: set before anything imports them.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"
NIH_DIR = FIXTURES / "nih_cxr14"


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def nih_images() -> list[Path]:
    """15 real NIH ChestX-ray14 PNGs (256 px, 8-bit grey)."""
    return sorted((NIH_DIR / "images").glob("*.png"))
