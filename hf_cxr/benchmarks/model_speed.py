"""Speed of the models: the groups `hf-cxr bench` measures (each architecture at a preset beside the timm
backbone(s) it is built on and the baselines, `build_groups`), the inference and training steps built for each
network, and `measure_group`, which measures one group's FLOPs, memory and interleaved images/s and the model /
comparator ratios in the same run.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import nn

from hf_cxr.benchmarks.timing import count_flops, interleaved_rates, paired_ratio, parameter_count, peak_memory_bytes
from hf_cxr.registry import build_config, build_model

DEFAULT_BASELINES = ("densenet121", "efficientvit_m4", "efficientvit_m5", "efficientnetv2_s")


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
