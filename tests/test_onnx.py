"""ONNX export of the tiny 2D presets, checked against PyTorch in onnxruntime; a model that cannot export names
the submodule at fault."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import hf_cxr
from hf_cxr.inference.onnx_export import OnnxExportError, export_onnx, locate_failing_module
from hf_cxr.registry import IMAGE_MODEL_TYPES

onnxruntime = pytest.importorskip("onnxruntime", reason="onnxruntime not installed: pip install 'hf-cxr[onnx]'")
pytest.importorskip("onnx", reason="onnx not installed: pip install 'hf-cxr[onnx]'")


@pytest.mark.slow
@pytest.mark.parametrize("model_type", IMAGE_MODEL_TYPES)
def test_tiny_preset_exports_and_matches_pytorch(model_type: str, tmp_path) -> None:
    torch.manual_seed(0)
    model = hf_cxr.build_model(model_type, "tiny")
    path = tmp_path / f"{model_type}.onnx"
    report = export_onnx(model, path, latency_repeats=2, threads=1)
    assert path.stat().st_size > 0
    assert report.checked and report.outputs_match, report
    assert report.max_abs_difference <= 1e-4
    assert report.torch_latency_ms > 0 and report.onnxruntime_latency_ms > 0
    # the dynamic batch axis: a batch size other than the export's and the check's
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    config = model.config
    pixels = torch.randn(5, config.num_channels, config.image_size, config.image_size)
    (logits,) = session.run(None, {session.get_inputs()[0].name: pixels.numpy()})
    with torch.inference_mode():
        expected = model.eval()(pixel_values=pixels).logits.numpy()
    assert logits.shape == (5, config.num_labels)
    assert abs(logits - expected).max() <= 1e-4


class _SingularValues(nn.Module):
    """SVD has no ONNX operator in either exporter."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.svdvals(x.flatten(1)[:, :4].reshape(-1, 2, 2)).reshape(x.shape[0], -1)


class _Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 2, 1)
        self.head = nn.Sequential(nn.Identity(), _SingularValues())

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.head(self.stem(pixel_values))


def test_unsupported_op_is_located() -> None:
    assert locate_failing_module(_Toy().eval(), torch.randn(2, 1, 4, 4), exporter="torchscript") == (
        "head.1",
        "_SingularValues",
    )


def test_export_error_names_the_module(tmp_path) -> None:
    model = hf_cxr.build_model("cr_msnet", "tiny")
    # Make the global attention unexportable: the error must name it, not pretend the export worked.
    model.cr_msnet.global_attention = nn.Sequential(model.cr_msnet.global_attention, _PassThroughSVD())
    with pytest.raises(OnnxExportError, match=r"model\.cr_msnet\.global_attention\.1.*_PassThroughSVD"):
        export_onnx(model, tmp_path / "bad.onnx", exporter="torchscript")
    assert not (tmp_path / "bad.onnx").exists()


class _PassThroughSVD(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0 * torch.linalg.svdvals(x.flatten(2)[..., :4].reshape(x.shape[0], x.shape[1], 2, 2)).sum()
