"""ONNX export of the 2D hf-cxr classifiers, checked against PyTorch, with CPU latency: clinics deploy on CPUs.

The graph takes `pixel_values` float32 [batch, C, H, W] (what the model's image processor returns) and returns
`logits` [batch, num_labels]; the batch axis is dynamic. `torch.onnx.export`'s dynamo exporter (needs
`onnxscript`) is tried first, then the TorchScript exporter: MA-MSF's momentum anchor (`functional_call`) only
goes through the first, MXA-EfficientViT's ROI pooling (`affine_grid`, opset >= 20) only through the second in
torch 2.14. When neither can export a model, `OnnxExportError` names the deepest submodule that fails on its own.
Install the checker and runtime with `pip install "hf-cxr[onnx]"`.
"""

from __future__ import annotations

import importlib.util
import io
import os
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedModel

from hf_cxr.machine import default_threads

DEFAULT_OPSET = 20  # affine_grid (MXA's differentiable ROI pooling) needs 20
EXPORTERS = ("auto", "dynamo", "torchscript")


class OnnxExportError(RuntimeError):
    """A model that cannot be exported, with the submodule that fails and each exporter's reason."""


@dataclass
class OnnxExportReport:
    path: str
    exporter: str
    opset: int
    input_shape: list[int]
    checked: bool
    check_batch_size: int | None = None
    max_abs_difference: float | None = None
    max_abs_logit: float | None = None  # the largest |logit| PyTorch gave on the check batch
    tolerance: float | None = None
    outputs_match: bool | None = None
    torch_latency_ms: float | None = None
    onnxruntime_latency_ms: float | None = None
    latency_batch_size: int | None = None
    threads: int | None = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class LogitsOnly(nn.Module):
    """`pixel_values -> logits`: the exported signature, without the model's optional outputs."""

    def __init__(self, model: PreTrainedModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values, return_dict=True).logits


def onnxruntime_available() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def load_image_classifier(model_id: str | os.PathLike) -> PreTrainedModel:
    """A saved 2D model folder or a Hub id in the local cache, on the CPU (`hf_cxr.registry.load_model`: never
    downloads, hf-cxr's own classes). Raises `ValueError` for a CT model (MMCAF-Net), and as `load_model` does
    (`FileNotFoundError` for neither a saved folder nor a cached id, or no image processor beside the model;
    `ValueError` for a model that is not an hf-cxr architecture)."""
    from hf_cxr.registry import is_ct_model, load_model

    model, _ = load_model(model_id, device="cpu")
    if is_ct_model(model.config.model_type):
        raise ValueError(f"'{os.fspath(model_id)}' is a CT model (MMCAF-Net); ONNX export covers the 2D models")
    return model


def _export_dynamo(module: nn.Module, args: tuple[torch.Tensor, ...], target: Any, opset: int, dynamic: bool) -> None:
    if importlib.util.find_spec("onnxscript") is None:
        raise ImportError("the dynamo exporter needs onnxscript (pip install onnxscript)")
    names = list(_forward_names(module, len(args)))
    shapes = {name: {0: torch.export.Dim("batch", min=1)} for name in names} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            args,
            dynamo=True,
            opset_version=opset,
            dynamic_shapes=shapes,
            input_names=names,
            output_names=["logits"] if dynamic else None,
            optimize=False,  # onnxruntime optimises the graph when it loads it; this pass took minutes
            verbose=False,
        )
    program.save(target, external_data=False)


def _export_torchscript(
    module: nn.Module, args: tuple[torch.Tensor, ...], target: Any, opset: int, dynamic: bool
) -> None:
    names = list(_forward_names(module, len(args)))
    axes = {**{name: {0: "batch"} for name in names}, "logits": {0: "batch"}} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            target,
            dynamo=False,
            opset_version=opset,
            input_names=names,
            output_names=["logits"],
            dynamic_axes=axes,
        )


def _forward_names(module: nn.Module, count: int) -> list[str]:
    import inspect

    parameters = [name for name in inspect.signature(module.forward).parameters if name not in ("args", "kwargs")]
    return parameters[:count] if len(parameters) >= count else [f"input_{index}" for index in range(count)]


def _try_exporters(
    module: nn.Module, args: tuple[torch.Tensor, ...], target: Any, opset: int, exporter: str, dynamic: bool = True
) -> tuple[str | None, dict[str, str]]:
    """The exporter that succeeded (None if none did) and each failed exporter's one-line reason."""
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    chain: list[tuple[str, Callable[..., None]]] = [("dynamo", _export_dynamo), ("torchscript", _export_torchscript)]
    if exporter != "auto":
        chain = [(name, fn) for name, fn in chain if name == exporter]
    errors: dict[str, str] = {}
    for name, export in chain:
        training = module.training
        try:
            module.eval()
            export(module, args, target, opset, dynamic)
            return name, errors
        except Exception as error:  # every exporter failure is reported, never swallowed
            errors[name] = _summary(error)
        finally:
            module.train(training)
    return None, errors


def _summary(error: BaseException) -> str:
    """The most specific line of an exporter's error (the dynamo exporter wraps the cause in a long report)."""
    causes = [error]
    while causes[-1].__cause__ is not None and len(causes) < 10:
        causes.append(causes[-1].__cause__)
    text = f"{type(causes[-1]).__name__}: {causes[-1]}"
    summary = "## Exception summary"
    if summary in str(error):
        text = str(error).split(summary, 1)[1].strip().splitlines()[0]
    return " ".join(text.split())[:500]


class _Bound(nn.Module):
    """A submodule called as in the model: recorded tensors in, keyword tensors and constants put back."""

    def __init__(self, module: nn.Module, positional: int, tensor_keys: list[str], constants: dict[str, Any]) -> None:
        super().__init__()
        self.module = module
        self.positional = positional
        self.tensor_keys = tensor_keys
        self.constants = constants

    def forward(self, *tensors: torch.Tensor) -> Any:
        keywords = dict(zip(self.tensor_keys, tensors[self.positional :], strict=True))
        return self.module(*tensors[: self.positional], **keywords, **self.constants)


def locate_failing_module(
    model: nn.Module, example: torch.Tensor, opset: int = DEFAULT_OPSET, exporter: str = "auto"
) -> tuple[str, str]:
    """(qualified name, class name) of the deepest submodule that cannot be exported on its own.

    Each submodule's positional tensor inputs are recorded during one forward; starting from the root, the search
    descends into the first child that fails to export, until no child fails. Raises `ValueError` for an
    `exporter` not in `EXPORTERS` (once a child is tried); export failures are the answer, not errors.
    """
    recorded: dict[str, tuple[nn.Module, tuple[torch.Tensor, ...]]] = {}
    handles = []
    for name, module in model.named_modules():

        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], name: str = name) -> None:
            if name not in recorded and all(isinstance(a, torch.Tensor) for a in args):
                tensors = {key: value for key, value in kwargs.items() if isinstance(value, torch.Tensor)}
                constants = {key: value for key, value in kwargs.items() if key not in tensors}
                bound = _Bound(module, len(args), list(tensors), constants)
                recorded[name] = (bound, tuple(t.detach() for t in (*args, *tensors.values())))

        handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    current, current_module = "", model
    while True:
        failing = None
        for child_name, child in current_module.named_children():
            qualified = f"{current}.{child_name}" if current else child_name
            if qualified not in recorded:
                continue
            bound, inputs = recorded[qualified]
            used, _ = _try_exporters(bound, inputs, io.BytesIO(), opset, exporter, dynamic=False)
            if used is None:
                failing = (qualified, child)
                break
        if failing is None:
            return current or "<root>", type(current_module).__name__
        current, current_module = failing


def export_onnx(
    model: PreTrainedModel,
    path: str | os.PathLike,
    opset: int = DEFAULT_OPSET,
    exporter: str = "auto",
    check: bool = True,
    tolerance: float = 1e-4,
    latency_repeats: int = 20,
    latency_batch_size: int = 1,
    threads: int | None = None,
) -> OnnxExportReport:
    """Exports `model` (an image classifier) to `path`; with onnxruntime installed and `check`, compares outputs
    on a batch of another size than the export's (so the dynamic axis is exercised) and times both at
    `latency_batch_size` on the CPU (medians, interleaved) with `threads` threads each (default: the idle cores,
    `hf_cxr.machine.default_threads`). `tolerance` bounds the largest |logit difference| relative to the
    largest |logit| when that is above 1: float32 rounding grows with the logits' scale, and an untrained paper
    preset's logits reach the thousands.

    Raises `ValueError` for a model whose config has no `image_size`/`num_channels` (not a 2D image classifier)
    and for an `exporter` not in `EXPORTERS`; `OnnxExportError` when no exporter tried can export the model,
    naming the deepest submodule that fails on its own (`locate_failing_module`) and each exporter's reason (a
    missing `onnxscript` is the dynamo exporter's reason, not an error of its own). A mismatch of the outputs is
    not raised: it is reported in `outputs_match`.
    """
    config = model.config
    if not hasattr(config, "image_size") or not hasattr(config, "num_channels"):
        raise ValueError(f"{type(model).__name__} is not a 2D image classifier (no image_size/num_channels)")
    model = model.to("cpu").eval()
    wrapper = LogitsOnly(model).eval()
    shape = [2, config.num_channels, config.image_size, config.image_size]
    example = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    used, errors = _try_exporters(wrapper, (example,), str(path), opset, exporter)
    model.eval()
    if used is None:
        where, kind = locate_failing_module(wrapper, example, opset, exporter)
        reasons = "; ".join(f"{name} exporter: {reason}" for name, reason in errors.items())
        raise OnnxExportError(
            f"{type(model).__name__} cannot be exported to ONNX (opset {opset}): the submodule {where!r} "
            f"({kind}) fails on its own. {reasons}"
        )
    report = OnnxExportReport(str(path), used, opset, shape, checked=False)
    if not check:
        return report
    if not onnxruntime_available():
        report.note = "onnxruntime is not installed (pip install 'hf-cxr[onnx]'): outputs not checked"
        return report
    threads = threads or default_threads()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _check_and_time(report, wrapper, path, shape, threads, tolerance, latency_repeats, latency_batch_size)
    finally:
        torch.set_num_threads(previous_threads)
    return report


def _check_and_time(
    report: OnnxExportReport,
    wrapper: nn.Module,
    path: Path,
    shape: list[int],
    threads: int,
    tolerance: float,
    latency_repeats: int,
    latency_batch_size: int,
) -> None:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    check_pixels = torch.randn(3, *shape[1:], generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = wrapper(check_pixels).float().numpy()
    actual = session.run(None, {input_name: check_pixels.numpy()})[0]
    difference = float(np.max(np.abs(actual - expected)))
    largest_logit = float(np.max(np.abs(expected)))
    report.checked = True
    report.check_batch_size = 3
    report.max_abs_difference = difference
    report.max_abs_logit = largest_logit
    report.tolerance = tolerance
    report.outputs_match = bool(actual.shape == expected.shape and difference <= tolerance * max(1.0, largest_logit))

    pixels = torch.randn(latency_batch_size, *shape[1:], generator=torch.Generator().manual_seed(2))
    feed = {input_name: pixels.numpy()}

    def run_torch() -> None:
        with torch.inference_mode():
            wrapper(pixels)

    def run_onnxruntime() -> None:
        session.run(None, feed)

    timings: dict[str, list[float]] = {"torch": [], "onnxruntime": []}
    runners = {"torch": run_torch, "onnxruntime": run_onnxruntime}
    for run in runners.values():
        run()  # warm-up
    for repeat in range(latency_repeats):
        for name in runners if repeat % 2 == 0 else reversed(runners):
            start = time.perf_counter()
            runners[name]()
            timings[name].append(1000 * (time.perf_counter() - start))
    report.torch_latency_ms = statistics.median(timings["torch"])
    report.onnxruntime_latency_ms = statistics.median(timings["onnxruntime"])
    report.latency_batch_size = latency_batch_size
    report.threads = threads


def format_report(report: OnnxExportReport) -> str:
    lines = [f"wrote {report.path} (exporter: {report.exporter}, opset {report.opset}, dynamic batch axis)"]
    if not report.checked:
        lines.append(report.note or "outputs not checked (--check not given)")
        return "\n".join(lines)
    verdict = "match" if report.outputs_match else "DO NOT MATCH"
    lines.append(
        f"onnxruntime vs PyTorch on a batch of {report.check_batch_size}: max |logit difference| "
        f"{report.max_abs_difference:.2e} with logits up to {report.max_abs_logit:.3g} (tolerance "
        f"{report.tolerance:.0e} x max(1, largest |logit|)): outputs {verdict}"
    )
    speedup = report.torch_latency_ms / report.onnxruntime_latency_ms
    lines.append(
        f"CPU latency, batch {report.latency_batch_size}, {report.threads} thread(s), median: PyTorch "
        f"{report.torch_latency_ms:.2f} ms, onnxruntime {report.onnxruntime_latency_ms:.2f} ms ({speedup:.2f}x)"
    )
    return "\n".join(lines)
