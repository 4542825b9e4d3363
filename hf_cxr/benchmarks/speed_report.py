"""The speed benchmark's result as markdown (`format_markdown`, what `hf-cxr bench` prints and writes):
settings and machine, one table of every network's measures, the model / comparator ratios, the data path, and
which of loader and model is the bottleneck (`bottleneck_lines`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hf_cxr.benchmarks.data_path import DEVICE_LOADER, EVAL_LOADER, TRAIN_LOADER

if TYPE_CHECKING:
    from hf_cxr.benchmarks.speed import BenchmarkResult


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
    """Which of loader and model limits training at the largest preset measured, per model: the model's training
    rate against the fastest loader that reads as training does on the bench's device (`--augment-on auto`: the
    augmentation batched on a GPU, in the loader on a CPU; without augmentation when only that was measured)."""
    stages = {stage.stage for stage in result.data_path}
    on_gpu = str(result.settings.get("device", "cpu")).startswith("cuda")
    preferred = [DEVICE_LOADER, TRAIN_LOADER] if on_gpu else [TRAIN_LOADER, DEVICE_LOADER]
    reading = next((stage for stage in (*preferred, EVAL_LOADER) if stage in stages), EVAL_LOADER)
    loaders = [stage for stage in result.data_path if stage.stage == reading]
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
            f"{best.images_per_second:.1f} img/s with {best.workers} worker(s) ({best.stage}): {limit} is the "
            "bottleneck."
        )
    return lines
