"""CT slab prediction: a converted Lung-PET-CT-Dx split through a CT model (MMCAF-Net) and its processor, slab by
slab, as training's validation and `hf-cxr evaluate` both score it."""

from __future__ import annotations

from typing import Any

import datasets
import numpy as np
import torch

from hf_cxr.machine import torch_device

# The clinical columns of a converted Lung-PET-CT-Dx split that the processor encodes (`hf-cxr convert
# lung-pet-ct-dx`), and every column a CT model's inputs are made from.
CLINICAL_COLUMNS = ("sex", "age", "weight_kg", "t_stage", "n_stage", "m_stage", "smoking_history")
CT_INPUT_COLUMNS = ("volume", "lesion_slice_range", *CLINICAL_COLUMNS)


def ct_input_rows(split: datasets.Dataset) -> datasets.Dataset:
    """The columns of `split` a CT processor reads (`CT_INPUT_COLUMNS`), the volume as a numpy array. Raises
    `ValueError` naming the missing columns for a split that is not a converted Lung-PET-CT-Dx split."""
    missing = [name for name in CT_INPUT_COLUMNS if name not in split.column_names]
    if missing:
        raise ValueError(
            f"the split lacks columns {missing}: pass a dataset converted by `hf-cxr convert lung-pet-ct-dx`"
        )
    columns = split.select_columns(list(CT_INPUT_COLUMNS))
    return columns.with_format("numpy", columns=["volume"], output_all_columns=True)


@torch.no_grad()
def predict_ct_slabs(
    model: torch.nn.Module,
    processor: Any,
    dataset: datasets.Dataset,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    slice_selection: str | None = None,
    slab_stride: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(softmax per slab [S, K] float64, dataset row of each slab [S] int64): every series of `dataset` cut into
    slabs by the processor (`slice_selection`, `slab_stride`: its own settings when None) and scored in batches
    of `batch_size` slabs. `device` defaults to CUDA when available; the model is left in eval mode there. Raises
    `ValueError` for a split without the CT columns or with no rows."""
    device = torch_device(device)
    model = model.to(device).eval()
    rows = ct_input_rows(dataset)
    options = {"slice_selection": slice_selection, "slab_stride": slab_stride}
    probabilities, row_of_slab = [], []
    for row_index in range(len(rows)):
        inputs = processor(rows[row_index], return_tensors="pt", **{k: v for k, v in options.items() if v})
        pixels, clinical = inputs["pixel_values"], inputs["clinical_values"]  # [N, 1, D, H, W], [N, 7]
        for start in range(0, len(pixels), batch_size):
            logits = model(
                pixel_values=pixels[start : start + batch_size].to(device),
                clinical_values=clinical[start : start + batch_size].to(device),
            ).logits
            probabilities.append(torch.softmax(logits.float(), dim=-1).cpu().numpy())
        row_of_slab.extend([row_index] * len(pixels))
    if not probabilities:
        raise ValueError("the split is empty: nothing to evaluate")
    return np.concatenate(probabilities).astype(np.float64), np.asarray(row_of_slab, dtype=np.int64)
