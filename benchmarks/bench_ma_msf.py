"""Inference cost of MA-MSF against the plain timm backbone it is built on, measured in the same run.

The issue's budget: the momentum anchor and the multi-scale fusion may cost at most 25% at inference. Both models
are timed in alternating order (A B, B A, A B, ...) so that a change in machine load hits both alike; reported are
the medians of each model's images/s over the repeats and the median of the per-repeat ratios (the steadier
figure on a shared machine). The extra modules (anchor, fusion, classifier) are also timed on their own, on the
backbone's real final features, against the plain model's head, pooling and classifier. The plain model is the
same timm backbone (same name and kwargs) with its own pooled 14-way classifier, i.e. what a user would train
instead.

    python benchmarks/bench_ma_msf.py --preset paper --batch-size 4 --repeats 7 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics

import timm
import torch
import transformers

import hf_cxr
from hf_cxr.benchmarks.timing import images_per_second, parameter_count
from hf_cxr.machine import cpu_name


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="paper", choices=["paper", "tiny"])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=3, help="forward passes per timed repeat")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--fusion", choices=["concat", "sum"], default=None, help="override the preset's fusion")
    parser.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    overrides = {"fusion": args.fusion} if args.fusion else {}
    model = hf_cxr.build_model("ma_msf", preset=args.preset, **overrides).eval()
    config = model.config
    plain = timm.create_model(
        config.backbone, pretrained=False, num_classes=config.num_labels, **config.backbone_kwargs
    ).eval()
    pixels = torch.randn(args.batch_size, config.num_channels, config.image_size, config.image_size)

    inner = model.ma_msf
    with torch.inference_mode():
        hidden = inner.backbone.blocks(inner.backbone.bn1(inner.backbone.conv_stem(pixels)))

    def extra_modules() -> torch.Tensor:
        online = inner.backbone.bn2(inner.backbone.conv_head(hidden))
        anchored = inner.anchor(hidden)
        fused = torch.cat([online, anchored], dim=1) if config.fusion == "concat" else online + anchored
        return model.classifier(inner.fusion(fused).mean(dim=(2, 3)))

    def plain_head() -> torch.Tensor:
        return plain.forward_head(plain.bn2(plain.conv_head(hidden)))

    runners = {"ma_msf": lambda: model(pixel_values=pixels).logits, "timm": lambda: plain(pixels)}
    heads = {"ma_msf": extra_modules, "timm": plain_head}
    rates: dict[str, list[float]] = {name: [] for name in runners}
    head_rates: dict[str, list[float]] = {name: [] for name in heads}
    with torch.inference_mode():
        for run in [*runners.values(), *heads.values()]:
            for _ in range(args.warmup):
                run()
        for repeat in range(args.repeats):
            order = list(runners) if repeat % 2 == 0 else list(reversed(runners))
            for name in order:
                rates[name].append(images_per_second(runners[name], args.batch_size, args.iterations))
                head_rates[name].append(images_per_second(heads[name], args.batch_size, 10 * args.iterations))

    medians = {name: statistics.median(values) for name, values in rates.items()}
    paired = statistics.median(a / b for a, b in zip(rates["ma_msf"], rates["timm"], strict=True))
    head_ms = {name: 1000 * args.batch_size / statistics.median(values) for name, values in head_rates.items()}
    result = {
        "preset": args.preset,
        "backbone": config.backbone,
        "image_size": config.image_size,
        "fusion": config.fusion,
        "anchor_scope": config.anchor_scope,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "repeats": args.repeats,
        "iterations": args.iterations,
        "images_per_second": medians,
        "ratio_of_medians": medians["ma_msf"] / medians["timm"],
        "median_paired_ratio": paired,
        "time_overhead": 1.0 / paired - 1.0,
        "head_ms_per_batch": head_ms,
        "parameters": {"ma_msf": parameter_count(model), "timm": parameter_count(plain)},
        "anchor_parameters": parameter_count(model.ma_msf.anchor),
        "machine": f"{cpu_name()}, {os.cpu_count()} logical CPUs, {platform.system()}",
        "load_average_1min_after": os.getloadavg()[0],
        "versions": {"torch": torch.__version__, "timm": timm.__version__, "transformers": transformers.__version__},
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"| model | images/s (median of {args.repeats}) | parameters |")
        print("|---|---|---|")
        for name in runners:
            print(f"| {name} | {medians[name]:.2f} | {result['parameters'][name] / 1e6:.2f} M |")
        print(
            f"\nimages/s ratio MA-MSF / timm: median of paired repeats {paired:.3f}, ratio of medians "
            f"{result['ratio_of_medians']:.3f} (time overhead {100 * result['time_overhead']:+.1f}%; budget +25%)"
        )
        print(
            f"after the shared trunk, per batch of {args.batch_size}: MA-MSF head+anchor+fusion+classifier "
            f"{head_ms['ma_msf']:.1f} ms, timm head+pool+classifier {head_ms['timm']:.1f} ms"
        )
    return result


if __name__ == "__main__":
    main()
