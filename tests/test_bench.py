"""The bench library on tiny inputs: sane numbers, FLOPs against hand counts, ratios from the same run.

Speed itself is never asserted (it depends on the machine); `hf-cxr bench` is the benchmark.
"""

from __future__ import annotations

import statistics

import pytest
import torch
from torch import nn

from hf_cxr.benchmarks import model_speed, speed, speed_report, timing
from hf_cxr.registry import build_model


def test_flops_match_hand_counts() -> None:
    linear = nn.Linear(8, 4)
    x = torch.randn(3, 8)
    assert timing.count_flops(lambda: linear(x)) == 2 * 3 * 8 * 4
    conv = nn.Conv2d(2, 3, kernel_size=3)  # 5x5 -> 3x3, no padding
    image = torch.randn(1, 2, 5, 5)
    assert timing.count_flops(lambda: conv(image)) == 2 * 3 * 3 * 3 * 2 * 3 * 3


def test_depthwise_backward_costs_two_forwards() -> None:
    """torch's own formula counts a depthwise weight gradient `channels` times over; ours must not."""
    conv = nn.Conv2d(16, 16, kernel_size=3, padding=1, groups=16)
    x = torch.randn(2, 16, 8, 8, requires_grad=True)
    forward = timing.count_flops(lambda: conv(x))
    assert forward == 2 * 2 * 16 * 8 * 8 * 3 * 3
    assert timing.count_flops(lambda: conv(x).sum().backward()) == 3 * forward


def test_peak_memory_sees_an_allocation() -> None:
    size = 1 << 20  # float32: 4 MiB
    peak = timing.peak_memory_bytes(lambda: torch.ones(size).add_(1.0), torch.device("cpu"))
    assert 4 * size <= peak < 3 * 4 * size


def test_interleaved_rates_and_paired_ratio() -> None:
    calls: list[str] = []
    runners = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    rates = timing.interleaved_rates(runners, batch_size=4, iterations=2, repeats=3)
    assert calls == ["a", "a", "b", "b", "b", "b", "a", "a", "a", "a", "b", "b"]
    assert all(len(values) == 3 and min(values) > 0 for values in rates.values())
    assert timing.paired_ratio([2.0, 4.0, 9.0], [1.0, 1.0, 3.0]) == 3.0


def test_gpu_peak_table() -> None:
    assert timing.gpu_peak_bf16_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert timing.gpu_peak_bf16_tflops("NVIDIA H100 PCIe") == 756.0
    assert timing.gpu_peak_bf16_tflops("NVIDIA H200") == 989.0
    assert timing.gpu_peak_bf16_tflops("Some Future GPU") is None


def test_groups_hold_models_backbones_and_baselines() -> None:
    groups = model_speed.build_groups(["cr_msnet", "ma_msf"], ["tiny"], ["efficientvit_m4"])
    assert list(groups) == ["tiny 64px"]
    size, entries = groups["tiny 64px"]
    assert size == 64
    roles = {entry.name: (entry.role, entry.backbone_of) for entry in entries}
    assert roles["cr_msnet (tiny)"][0] == "model"
    assert roles["coatnet_nano_rw_224*"] == ("backbone", ["cr_msnet (tiny)"])
    assert roles["resnet18*"] == ("backbone", ["cr_msnet (tiny)"])
    assert roles["efficientnetv2_s*"] == ("backbone", ["ma_msf (tiny)"])
    assert roles["efficientvit_m4"][0] == "baseline"


def test_tiny_run_returns_sane_numbers_and_same_run_ratios() -> None:
    result = speed.run_benchmark(
        model_types=["ma_msf"],
        presets=["tiny"],
        baselines=["efficientvit_m4"],
        batch_size=2,
        repeats=2,
        device="cpu",
        threads=1,
        data_workers=[0],
        data_images=8,
    )
    by_name = {entry.name: entry for entry in result.entries}
    assert set(by_name) == {"ma_msf (tiny)", "efficientnetv2_s*", "efficientvit_m4"}
    for entry in result.entries:
        assert len(entry.inference_rates) == len(entry.train_rates) == 2
        assert entry.inference_images_per_second == statistics.median(entry.inference_rates) > 0
        assert entry.train_images_per_second == statistics.median(entry.train_rates) > 0
        assert entry.parameters > 0
        # a training step does the forward and about twice its work backward
        assert 2.0 < entry.train_gflops_per_image / entry.inference_gflops_per_image < 4.0
        assert entry.train_peak_mib > 0
    model = by_name["ma_msf (tiny)"]
    assert model.parameters == sum(p.numel() for p in build_model("ma_msf", "tiny").parameters())
    ratios = {ratio.comparator: ratio for ratio in result.ratios}
    assert set(ratios) == {"efficientnetv2_s*", "efficientvit_m4"}
    for name, ratio in ratios.items():
        expected = statistics.median(
            a / b for a, b in zip(model.inference_rates, by_name[name].inference_rates, strict=True)
        )
        assert ratio.inference_ratio == pytest.approx(expected)
        expected = statistics.median(a / b for a, b in zip(model.train_rates, by_name[name].train_rates, strict=True))
        assert ratio.train_ratio == pytest.approx(expected)
    stages = {(stage.stage, stage.workers) for stage in result.data_path}
    assert ("dataset + DataLoader", 0) in stages and ("PNG decode (PIL)", 0) in stages
    assert ("dataset + DataLoader + augmentation", 0) in stages  # as training reads: the MA-MSF recipe's augmentation
    augmented = next(stage for stage in result.data_path if stage.stage == "dataset + DataLoader + augmentation")
    assert "ma_msf_chestxray14 recipe's augmentation" in augmented.detail
    assert ("dataset + DataLoader, augmentation on the device", 0) in stages  # batched after the loader, on the CPU
    assert all(stage.images == 8 and stage.images_per_second > 0 for stage in result.data_path)
    text = speed_report.format_markdown(result)
    assert "| tiny 64px | ma_msf (tiny) | model |" in text
    assert "(dataset + DataLoader + augmentation): the" in text  # the verdict is on the training reader
    assert "the model is the bottleneck" in text or "the loader is the bottleneck" in text
    assert result.machine["threads"] == 1 and result.settings["batch_size"] == 2


def test_cli_writes_markdown_and_json(tmp_path, capsys) -> None:
    from hf_cxr.cli import main

    out = tmp_path / "bench.md"
    args = ["bench", "--models", "mxa_efficientvit", "--presets", "tiny", "--baselines", "--repeats", "1"]
    assert main([*args, "--no-data", "--no-train", "--threads", "1", "--out", str(out)]) == 0
    assert "mxa_efficientvit (tiny)" in out.read_text()
    import json

    data = json.loads(out.with_suffix(".json").read_text())
    assert {entry["name"] for entry in data["entries"]} == {"mxa_efficientvit (tiny)", "efficientvit_m0* (1ch)"}
    assert data["entries"][0]["train_images_per_second"] is None
    assert "mxa_efficientvit (tiny)" in capsys.readouterr().out
