"""Speed of the hf-cxr architectures beside the models users compare them with, and of the data path feeding them.

`run_benchmark` measures, for every architecture at each preset, inference and training-step images/s, the
tensor memory of one step, parameters and FLOPs, beside timm baselines (DenseNet-121, the CheXNet standard;
EfficientViT-M4/M5; EfficientNetV2-S) and the plain timm backbone(s) each model is built on. All entries of one
preset and input size form a group measured in the same run, interleaved (A B C, C B A, ...) so that a change in
machine load hits all alike; reported are medians over repeats and, per model/comparator pair, the median of the
per-repeat ratios (the steadier figure on a shared machine). `measure_data_path` times raw PNG decoding, the
image processor and a converted-style dataset read through `with_transform` with N DataLoader workers, so a user
sees whether the loader or the model is the bottleneck. Speed is never asserted in tests: this is a script.

FLOPs are counted by `torch.utils.flop_counter.FlopCounterMode` (2 per multiply-add, so twice the "GMACs" some
papers call GFLOPs); a training step's FLOPs are counted on its forward and backward pass.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
import transformers
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from hf_cxr.machine import cpu_name, default_threads
from hf_cxr.registry import ARCHITECTURES, build_config, build_image_processor, build_model

DEFAULT_BASELINES = ("densenet121", "efficientvit_m4", "efficientvit_m5", "efficientnetv2_s")
# Dense (no sparsity) bf16 tensor-core peak in TFLOPS from the vendors' data sheets, matched against
# `torch.cuda.get_device_name()` in this order (the first key contained in the name wins).
PEAK_BF16_TFLOPS: dict[str, float] = {
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "H200": 989.0,
    "H100": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
}


# --- timing helpers (shared with benchmarks/bench_ma_msf.py) -------------------------------------------------------


def images_per_second(
    run: Callable[[], object], batch_size: int, iterations: int, synchronize: Callable[[], None] | None = None
) -> float:
    """Images/s of `iterations` calls of `run` on batches of `batch_size`; `synchronize` waits for a GPU's queue."""
    if synchronize is not None:
        synchronize()
    start = time.perf_counter()
    for _ in range(iterations):
        run()
    if synchronize is not None:
        synchronize()
    return batch_size * iterations / (time.perf_counter() - start)


def interleaved_rates(
    runners: dict[str, Callable[[], object]],
    batch_size: int,
    iterations: int,
    repeats: int,
    synchronize: Callable[[], None] | None = None,
) -> dict[str, list[float]]:
    """Images/s of each runner per repeat, in alternating order (forward on even repeats, reversed on odd ones)."""
    rates: dict[str, list[float]] = {name: [] for name in runners}
    for repeat in range(repeats):
        order = list(runners) if repeat % 2 == 0 else list(reversed(runners))
        for name in order:
            rates[name].append(images_per_second(runners[name], batch_size, iterations, synchronize))
    return rates


def paired_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> float:
    """Median over repeats of the ratio of two rates measured in the same repeat."""
    return statistics.median(a / b for a, b in zip(numerator, denominator, strict=True))


def parameter_count(module: nn.Module) -> int:
    return sum(param.numel() for param in module.parameters())


def _conv_backward_flops(
    grad_out_shape: list[int],
    x_shape: list[int],
    w_shape: list[int],
    _bias: Any,
    _stride: Any,
    _padding: Any,
    _dilation: Any,
    transposed: bool,
    _output_padding: Any,
    _groups: int,
    output_mask: Sequence[bool],
    out_shape: Any,
    **kwargs: Any,
) -> int:
    """Each of the input and weight gradients costs what the forward convolution costs.

    Replaces torch's formula, whose weight-gradient term ignores `groups` and so counts a depthwise convolution's
    backward `channels` times over (EfficientNet and EfficientViT came out at 5-14x their forward FLOPs).
    """
    forward = conv_flop_count(x_shape, w_shape, grad_out_shape, transposed)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def count_flops(run: Callable[[], object]) -> int:
    """FLOPs of everything `run` executes (forward, and backward if it calls it), by FlopCounterMode."""
    mapping = {torch.ops.aten.convolution_backward: _conv_backward_flops}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        run()
    return int(counter.get_total_flops())


def peak_memory_bytes(run: Callable[[], object], device: torch.device) -> int:
    """Peak of the tensor memory that `run` allocates beyond what was live before it.

    On CUDA from the allocator's statistics; on CPU, where there are none, from the autograd profiler's record of
    every allocation and free (ops in start order, cumulative), which costs about one extra step.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        run()
        torch.cuda.synchronize(device)
        return max(torch.cuda.max_memory_allocated(device) - before, 0)
    with torch.autograd.profiler.profile(profile_memory=True, use_kineto=False) as profile:
        run()
    current = peak = 0
    for event in sorted(profile.function_events, key=lambda event: event.time_range.start):
        current += event.self_cpu_memory_usage
        peak = max(peak, current)
    return peak


def gpu_peak_bf16_tflops(device_name: str) -> float | None:
    """The dense bf16 peak of a known GPU (`PEAK_BF16_TFLOPS`), else None."""
    for key, tflops in PEAK_BF16_TFLOPS.items():
        if key.lower() in device_name.lower():
            return tflops
    return None


# --- what is measured ----------------------------------------------------------------------------------------------


@dataclass
class BenchEntry:
    """One network of a group: an hf-cxr model (takes `pixel_values`, returns `.logits`/`.loss`) or a timm model."""

    name: str
    role: str  # "model", "backbone" or "baseline"
    module: nn.Module
    num_channels: int
    num_labels: int
    is_hf: bool
    backbone_of: list[str] = field(default_factory=list)


@dataclass
class EntryResult:
    name: str
    role: str
    group: str
    image_size: int
    parameters: int
    inference_gflops_per_image: float
    train_gflops_per_image: float | None
    inference_images_per_second: float
    train_images_per_second: float | None
    inference_rates: list[float]
    train_rates: list[float]
    inference_peak_mib: float
    train_peak_mib: float | None
    inference_peak_fraction: float | None = None  # of the GPU's bf16 peak
    train_peak_fraction: float | None = None
    backbone_of: list[str] = field(default_factory=list)


@dataclass
class RatioResult:
    """Model speed / comparator speed (above 1: the model is faster), median of the per-repeat ratios."""

    group: str
    model: str
    comparator: str
    comparator_role: str
    inference_ratio: float
    train_ratio: float | None


@dataclass
class DataPathResult:
    stage: str
    workers: int
    images: int
    images_per_second: float
    detail: str = ""


@dataclass
class BenchmarkResult:
    entries: list[EntryResult]
    ratios: list[RatioResult]
    data_path: list[DataPathResult]
    settings: dict[str, Any]
    machine: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def backbone_specs(model_type: str, config: Any) -> list[tuple[str, dict[str, Any]]]:
    """The timm model(s) an architecture builds on, with the kwargs it passes (as plain classifiers)."""
    if model_type == "cr_msnet":
        return [
            (
                config.global_backbone,
                {
                    "img_size": config.image_size,
                    "drop_path_rate": config.drop_path_rate,
                    **config.global_backbone_kwargs,
                },
            ),
            (config.local_backbone, {"drop_path_rate": config.drop_path_rate, **config.local_backbone_kwargs}),
        ]
    if model_type == "ma_msf":
        return [(config.backbone, {"drop_path_rate": config.drop_path_rate, **config.backbone_kwargs})]
    if model_type == "mxa_efficientvit":
        return [
            (
                f"efficientvit_{config.variant}",
                {
                    "img_size": config.image_size,
                    "embed_dim": tuple(config.embed_dim),
                    "depth": tuple(config.depth),
                    "num_heads": tuple(config.num_heads),
                    "kernels": tuple(config.kernels),
                    "key_dim": (config.key_dim,) * 3,
                    "window_size": (config.window_size,) * 3,
                },
            )
        ]
    return []


def image_model_types() -> list[str]:
    """The 2D image classifiers (MMCAF-Net takes CT volumes plus a clinical table: not comparable here)."""
    return [
        name
        for name, arch in ARCHITECTURES.items()
        if arch.task_auto_class is transformers.AutoModelForImageClassification
    ]


def _timm_model(name: str, num_labels: int, in_chans: int, **kwargs: Any) -> nn.Module:
    return timm.create_model(name, pretrained=False, num_classes=num_labels, in_chans=in_chans, **kwargs)


def build_groups(
    model_types: Sequence[str], presets: Sequence[str], baselines: Sequence[str]
) -> dict[str, tuple[int, list[BenchEntry]]]:
    """Groups keyed `"<preset> <size>px"`: the models of that preset and input size, their backbones, the baselines.

    A backbone built with exactly a baseline's arguments is measured once (marked as both).
    """
    groups: dict[str, tuple[int, list[BenchEntry]]] = {}
    for preset in presets:
        backbones: dict[str, BenchEntry] = {}
        for model_type in model_types:
            config = build_config(model_type, preset)
            key = f"{preset} {config.image_size}px"
            size, entries = groups.setdefault(key, (config.image_size, []))
            torch.manual_seed(0)
            model_name = f"{model_type} ({preset})"
            entries.append(
                BenchEntry(
                    model_name,
                    "model",
                    build_model(model_type, preset),
                    config.num_channels,
                    config.num_labels,
                    is_hf=True,
                )
            )
            for backbone, kwargs in backbone_specs(model_type, config):
                spec = repr((key, backbone, sorted(kwargs.items()), config.num_channels))
                if spec in backbones:
                    backbones[spec].backbone_of.append(model_name)
                    continue
                # `*`: built with the preset's own widths/depths, not the published timm configuration.
                label = backbone if set(kwargs) <= {"img_size", "drop_path_rate"} else f"{backbone}*"
                label = label if config.num_channels == 3 else f"{label} ({config.num_channels}ch)"
                module = _timm_model(backbone, config.num_labels, config.num_channels, **kwargs)
                backbones[spec] = BenchEntry(
                    label, "backbone", module, config.num_channels, config.num_labels, False, [model_name]
                )
                entries.append(backbones[spec])
        for key, (size, entries) in groups.items():
            if not key.startswith(f"{preset} "):
                continue
            num_labels = next(e.num_labels for e in entries if e.role == "model")
            for baseline in baselines:
                same = next((e for e in entries if e.name == baseline), None)
                if same is not None:
                    same.role = "backbone+baseline"
                    continue
                kwargs = {"img_size": size} if baseline.startswith("efficientvit_m") else {}
                module = _timm_model(baseline, num_labels, 3, **kwargs)
                entries.append(BenchEntry(baseline, "baseline", module, 3, num_labels, False))
    return groups


def classifier_logits(module: nn.Module, pixels: torch.Tensor, is_hf: bool) -> torch.Tensor:
    """Logits of an hf-cxr model (`pixel_values` in, `.logits` out) or of a timm classifier."""
    return module(pixel_values=pixels).logits if is_hf else module(pixels)


def classifier_loss(module: nn.Module, pixels: torch.Tensor, labels: torch.Tensor, is_hf: bool) -> torch.Tensor:
    """An hf-cxr model's own configured loss, or binary cross-entropy for a timm classifier."""
    if is_hf:
        return module(pixel_values=pixels, labels=labels).loss
    return F.binary_cross_entropy_with_logits(module(pixels).float(), labels)


@dataclass
class _Prepared:
    entry: BenchEntry
    infer: Callable[[], object]
    train: Callable[[], object] | None
    flops_infer: int
    flops_train: int | None


def _prepare(
    entry: BenchEntry,
    image_size: int,
    batch_size: int,
    device: torch.device,
    train: bool,
    use_bf16: bool,
    channels_last: bool,
    compile_model: bool,
) -> _Prepared:
    """Moves the entry to the device, counts its FLOPs in eager mode and builds its inference and training steps."""
    module = entry.module.to(device)
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(batch_size, entry.num_channels, image_size, image_size, generator=generator).to(device)
    if channels_last:
        pixels = pixels.contiguous(memory_format=torch.channels_last)
    labels = (torch.rand(batch_size, entry.num_labels, generator=generator) < 0.2).float().to(device)

    def autocast() -> AbstractContextManager:
        return torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else nullcontext()

    def eager_infer() -> None:
        module.eval()
        with torch.inference_mode(), autocast():
            classifier_logits(module, pixels, entry.is_hf)

    def eager_train_pass() -> None:
        module.train()
        with autocast():
            loss = classifier_loss(module, pixels, labels, entry.is_hf)
        loss.backward()
        module.zero_grad(set_to_none=True)

    flops_infer = count_flops(eager_infer)
    flops_train = count_flops(eager_train_pass) if train else None
    runner = torch.compile(module) if compile_model else module
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-4)

    def infer() -> None:
        module.eval()
        with torch.inference_mode(), autocast():
            classifier_logits(runner, pixels, entry.is_hf)

    def train_step() -> None:
        module.train()
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = classifier_loss(runner, pixels, labels, entry.is_hf)
        loss.backward()
        optimizer.step()

    return _Prepared(entry, infer, train_step if train else None, flops_infer, flops_train)


def _warm(item: _Prepared, steps: int) -> None:
    for _ in range(steps):
        item.infer()
        if item.train is not None:
            item.train()


def measure_group(
    group: str,
    image_size: int,
    entries: list[BenchEntry],
    batch_size: int,
    repeats: int,
    warmup: int = 1,
    iterations: int = 1,
    device: torch.device | str = "cpu",
    train: bool = True,
    use_bf16: bool | None = None,
    channels_last: bool | None = None,
    compile_model: bool = False,
    peak_tflops: float | None = None,
) -> tuple[list[EntryResult], list[RatioResult]]:
    """Measures one group in the same run: FLOPs, memory (during warm-up), then interleaved timed repeats.

    bf16 autocast and channels-last default to on for CUDA, off for CPU (fp32 is what CPU deployment runs).
    """
    device = torch.device(device)
    cuda = device.type == "cuda"
    use_bf16 = cuda if use_bf16 is None else use_bf16
    channels_last = cuda if channels_last is None else channels_last
    synchronize = (lambda: torch.cuda.synchronize(device)) if cuda else None
    prepared = [
        _prepare(entry, image_size, batch_size, device, train, use_bf16, channels_last, compile_model)
        for entry in entries
    ]
    memory: dict[str, tuple[int, int | None]] = {}
    for item in prepared:
        # On CPU the profiled step is the first warm-up step (it costs about one step); on CUDA the warm-up
        # (torch.compile's compilation included) comes first and one more step is measured.
        extra = warmup if cuda else warmup - 1
        if cuda:
            _warm(item, extra)
        infer_peak = peak_memory_bytes(item.infer, device)
        train_peak = peak_memory_bytes(item.train, device) if item.train is not None else None
        if not cuda:
            _warm(item, extra)
        memory[item.entry.name] = (infer_peak, train_peak)
    runners: dict[str, Callable[[], object]] = {}
    for item in prepared:
        runners[f"{item.entry.name}\0infer"] = item.infer
        if item.train is not None:
            runners[f"{item.entry.name}\0train"] = item.train
    rates = interleaved_rates(runners, batch_size, iterations, repeats, synchronize)

    results = []
    for item in prepared:
        name = item.entry.name
        infer_rates = rates[f"{name}\0infer"]
        train_rates = rates.get(f"{name}\0train", [])
        infer_ips = statistics.median(infer_rates)
        train_ips = statistics.median(train_rates) if train_rates else None
        flops_train = item.flops_train / batch_size if item.flops_train is not None else None
        result = EntryResult(
            name=name,
            role=item.entry.role,
            group=group,
            image_size=image_size,
            parameters=parameter_count(item.entry.module),
            inference_gflops_per_image=item.flops_infer / batch_size / 1e9,
            train_gflops_per_image=flops_train / 1e9 if flops_train is not None else None,
            inference_images_per_second=infer_ips,
            train_images_per_second=train_ips,
            inference_rates=infer_rates,
            train_rates=train_rates,
            inference_peak_mib=memory[name][0] / 2**20,
            train_peak_mib=memory[name][1] / 2**20 if memory[name][1] is not None else None,
            backbone_of=item.entry.backbone_of,
        )
        if peak_tflops:
            result.inference_peak_fraction = item.flops_infer / batch_size * infer_ips / (peak_tflops * 1e12)
            if flops_train is not None and train_ips is not None:
                result.train_peak_fraction = flops_train * train_ips / (peak_tflops * 1e12)
        results.append(result)

    ratios = []
    for model in (e for e in entries if e.role == "model"):
        # A model against its own backbone(s) and every baseline, not against other models' backbones.
        comparators = [e for e in entries if "baseline" in e.role or model.name in e.backbone_of]
        for other in comparators:
            train_ratio = None
            if train:
                train_ratio = paired_ratio(rates[f"{model.name}\0train"], rates[f"{other.name}\0train"])
            ratios.append(
                RatioResult(
                    group,
                    model.name,
                    other.name,
                    other.role,
                    paired_ratio(rates[f"{model.name}\0infer"], rates[f"{other.name}\0infer"]),
                    train_ratio,
                )
            )
    return results, ratios


# --- the data path -------------------------------------------------------------------------------------------------


def measure_data_path(
    model_type: str = "ma_msf",
    preset: str = "paper",
    workers: Sequence[int] = (0, 2),
    images: int = 200,
    batch_size: int = 32,
    repeats: int = 3,
) -> list[DataPathResult]:
    """Images/s of raw PNG decoding (PIL, torchvision), the image processor, and the dataset through
    `with_transform(eval_transform(processor))` read by a DataLoader with each number of workers.

    Uses the bundled real NIH sample (128-px PNGs; converted full datasets store 512 px by default, which costs
    more per image to decode and resize).
    """
    from PIL import Image
    from torch.utils.data import DataLoader
    from torchvision.io import decode_png, read_file

    from hf_cxr.data.transforms import eval_transform
    from hf_cxr.sample import SAMPLE_DIR, load_labelled_folder

    files = sorted((Path(SAMPLE_DIR) / "images").glob("*.png"))[:images]
    count = len(files)

    def decode_pil() -> None:
        for path in files:
            with Image.open(path) as image:
                image.load()

    def decode_torchvision() -> None:
        for path in files:
            decode_png(read_file(str(path)))

    decoded = []
    for path in files:
        with Image.open(path) as image:
            decoded.append(image.copy())
    processor = build_image_processor(model_type, preset)

    def process() -> None:
        for start in range(0, count, batch_size):
            processor(decoded[start : start + batch_size], return_tensors="pt")

    size = processor.size
    detail = f"{model_type} {preset} processor -> {size['height']}x{size['width']}"
    results = []
    for stage, run, note in (
        ("PNG decode (PIL)", decode_pil, "Image.open + load"),
        ("PNG decode (torchvision)", decode_torchvision, "read_file + decode_png"),
        ("image processor", process, f"{detail}, batches of {batch_size}, on decoded images"),
    ):
        rates = [images_per_second(run, count, 1) for _ in range(repeats)]
        results.append(DataPathResult(stage, 0, count, statistics.median(rates), note))

    dataset = load_labelled_folder().select(range(count)).with_transform(eval_transform(processor))
    for num_workers in workers:

        def read_all(num_workers: int = num_workers) -> None:
            loader = DataLoader(
                dataset,
                batch_size=batch_size,
                num_workers=num_workers,
                collate_fn=transformers.default_data_collator,
            )
            for _ in loader:
                pass

        rates = [images_per_second(read_all, count, 1) for _ in range(repeats)]
        note = f"with_transform(eval_transform), {detail}, DataLoader start-up included"
        results.append(DataPathResult("dataset + DataLoader", num_workers, count, statistics.median(rates), note))
    return results


# --- the whole run -------------------------------------------------------------------------------------------------


def machine_description(device: torch.device, threads: int) -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu": cpu_name(),
        "logical_cpus": os.cpu_count(),
        "threads": threads,
        "load_average_1min_before": os.getloadavg()[0],
        "system": platform.system(),
        "python": platform.python_version(),
        "versions": {
            "torch": torch.__version__,
            "timm": timm.__version__,
            "transformers": transformers.__version__,
        },
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def run_benchmark(
    model_types: Sequence[str] | None = None,
    presets: Sequence[str] = ("tiny", "paper"),
    baselines: Sequence[str] = DEFAULT_BASELINES,
    batch_size: int | None = None,
    repeats: int = 3,
    warmup: int | None = None,
    iterations: int = 1,
    device: str | None = None,
    threads: int | None = None,
    train: bool = True,
    compile_model: bool = False,
    channels_last: bool | None = None,
    use_bf16: bool | None = None,
    peak_tflops: float | None = None,
    data_path: bool = True,
    data_workers: Sequence[int] = (0, 2),
    data_images: int = 200,
    progress: Callable[[str], None] | None = None,
) -> BenchmarkResult:
    """Every group measured in turn (see the module docstring); the data path last.

    Defaults: CUDA when available (batch 64, 3 warm-up steps for `torch.compile`), else CPU (batch 2, one warm-up
    step, `default_threads()` threads).
    """
    model_types = list(model_types) if model_types else image_model_types()
    resolved = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = resolved.type == "cuda"
    batch_size = batch_size or (64 if cuda else 2)
    warmup = warmup if warmup is not None else (3 if cuda else 1)
    if warmup < 1:
        raise ValueError("warmup must be at least 1 (memory is measured during the first warm-up step)")
    if train and batch_size < 2:
        raise ValueError("a training step needs batch_size >= 2 (BatchNorm in training mode)")
    threads = threads or (torch.get_num_threads() if cuda else default_threads())
    if peak_tflops is None and cuda:
        peak_tflops = gpu_peak_bf16_tflops(torch.cuda.get_device_name(resolved))
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    machine = machine_description(resolved, threads)
    settings = {
        "device": str(resolved),
        "batch_size": batch_size,
        "repeats": repeats,
        "warmup": warmup,
        "iterations": iterations,
        "train": train,
        "bf16_autocast": cuda if use_bf16 is None else use_bf16,
        "channels_last": cuda if channels_last is None else channels_last,
        "compile": compile_model,
        "peak_bf16_tflops": peak_tflops,
        "models": model_types,
        "presets": list(presets),
        "baselines": list(baselines),
    }
    entries: list[EntryResult] = []
    ratios: list[RatioResult] = []
    data: list[DataPathResult] = []
    try:
        for group, (size, members) in build_groups(model_types, presets, baselines).items():
            if progress:
                progress(f"measuring {group}: {', '.join(m.name for m in members)}")
            group_entries, group_ratios = measure_group(
                group,
                size,
                members,
                batch_size,
                repeats,
                warmup,
                iterations,
                resolved,
                train,
                use_bf16,
                channels_last,
                compile_model,
                peak_tflops if cuda else None,
            )
            entries += group_entries
            ratios += group_ratios
        if data_path:
            if progress:
                progress("measuring the data path")
            data = measure_data_path(model_types[0], presets[-1], data_workers, data_images, repeats=repeats)
    finally:
        torch.set_num_threads(previous_threads)
    machine["load_average_1min_after"] = os.getloadavg()[0]
    return BenchmarkResult(entries, ratios, data, settings, machine)


def _number(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_markdown(result: BenchmarkResult) -> str:
    """The result as markdown: settings, one table per measure, ratios, the data path and where the bottleneck is."""
    settings, machine = result.settings, result.machine
    device = machine.get("gpu", f"{machine['cpu']}, {machine['threads']} thread(s) of {machine['logical_cpus']}")
    lines = [
        f"Device: {settings['device']} ({device}); batch {settings['batch_size']}, medians of {settings['repeats']} "
        f"interleaved repeats x {settings['iterations']} step(s), {settings['warmup']} warm-up step(s); "
        f"bf16 autocast {settings['bf16_autocast']}, channels-last {settings['channels_last']}, "
        f"torch.compile {settings['compile']}.",
        f"Versions: torch {machine['versions']['torch']}, timm {machine['versions']['timm']}, transformers "
        f"{machine['versions']['transformers']}, Python {machine['python']}. 1-minute load average "
        f"{machine['load_average_1min_before']:.2f} before, {machine['load_average_1min_after']:.2f} after.",
        "GFLOPs per image by FlopCounterMode (2 FLOPs per multiply-add); train = forward + backward. Peak memory: "
        "tensors allocated during one step beyond the weights (train: activations, gradients, AdamW state).",
        "",
    ]
    gpu = settings["device"].startswith("cuda") and settings["peak_bf16_tflops"]
    header = (
        "| group | network | role | params (M) | GFLOPs/img inference | GFLOPs/img train | inference img/s "
        "| train img/s | peak MiB inference | peak MiB train |"
    )
    rule = "|---|---|---|---|---|---|---|---|---|---|"
    if gpu:
        header += " inference % of bf16 peak | train % of bf16 peak |"
        rule += "---|---|"
    lines += [header, rule]
    for entry in result.entries:
        role = entry.role + (f" of {', '.join(entry.backbone_of)}" if entry.backbone_of else "")
        row = (
            f"| {entry.group} | {entry.name} | {role} | {entry.parameters / 1e6:.2f} | "
            f"{entry.inference_gflops_per_image:.3f} | {_number(entry.train_gflops_per_image, 3)} | "
            f"{entry.inference_images_per_second:.2f} | {_number(entry.train_images_per_second)} | "
            f"{entry.inference_peak_mib:.1f} | {_number(entry.train_peak_mib, 1)} |"
        )
        if gpu:
            inference = entry.inference_peak_fraction
            training = entry.train_peak_fraction
            row += (
                f" {_number(100 * inference if inference is not None else None, 1)} |"
                f" {_number(100 * training if training is not None else None, 1)} |"
            )
        lines.append(row)
    if result.ratios:
        lines += [
            "",
            "Speed ratios, model / comparator images/s (median of the per-repeat ratios; above 1 the model is faster):",
            "",
            "| group | model | comparator | comparator role | inference ratio | train ratio |",
            "|---|---|---|---|---|---|",
        ]
        for ratio in result.ratios:
            lines.append(
                f"| {ratio.group} | {ratio.model} | {ratio.comparator} | {ratio.comparator_role} | "
                f"{ratio.inference_ratio:.3f} | {_number(ratio.train_ratio, 3)} |"
            )
    if result.data_path:
        lines += ["", "Data path (bundled real NIH PNGs, 128 px):", "", "| stage | workers | images | images/s | how |"]
        lines.append("|---|---|---|---|---|")
        for stage in result.data_path:
            lines.append(
                f"| {stage.stage} | {stage.workers} | {stage.images} | {stage.images_per_second:.1f} | {stage.detail} |"
            )
        lines += ["", *bottleneck_lines(result)]
    return "\n".join(lines) + "\n"


def bottleneck_lines(result: BenchmarkResult) -> list[str]:
    """Which of loader and model limits training at the largest preset measured, per model."""
    loaders = [stage for stage in result.data_path if stage.stage == "dataset + DataLoader"]
    if not loaders:
        return []
    best = max(loaders, key=lambda stage: stage.images_per_second)
    lines = []
    for entry in result.entries:
        if entry.role != "model" or entry.train_images_per_second is None:
            continue
        if not entry.group.startswith(result.settings["presets"][-1]):
            continue
        limit = "the loader" if best.images_per_second < entry.train_images_per_second else "the model"
        lines.append(
            f"- {entry.name}: trains at {entry.train_images_per_second:.1f} img/s; the loader gives "
            f"{best.images_per_second:.1f} img/s with {best.workers} worker(s): {limit} is the bottleneck."
        )
    return lines
