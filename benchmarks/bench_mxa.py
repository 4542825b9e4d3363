"""What the MXA block costs: MXA-EfficientViT M4/M5 against timm's plain EfficientViT M4/M5 (issue 5's budget is
+30%), the `reference` fusion (attention run twice), and hf-cxr's own model with `use_mxa=False`, all measured
in the same run, interleaved, with `hf_cxr.benchmarks.model_speed`'s timing (medians over repeats, per-repeat ratios).

    python benchmarks/bench_mxa.py [--batch-size 2] [--repeats 5] [--threads 1] [--device cpu]
"""

from __future__ import annotations

import argparse

import timm
import torch

from hf_cxr.benchmarks.model_speed import BenchEntry, measure_group
from hf_cxr.benchmarks.speed import machine_description
from hf_cxr.machine import default_threads
from hf_cxr.registry import build_model


def entries() -> list[BenchEntry]:
    networks = []
    for variant in ("m4", "m5"):
        plain = f"efficientvit_{variant} (1ch)"
        variants = {
            f"mxa {variant} parallel": {"variant": variant},
            f"mxa {variant} reference": {"variant": variant, "mxa_fusion": "reference"},
            f"mxa {variant} without MXA": {"variant": variant, "use_mxa": False},
        }
        for name, overrides in variants.items():
            torch.manual_seed(0)
            model = build_model("mxa_efficientvit", "paper", **overrides)
            networks.append(BenchEntry(name, "model", model, 1, model.config.num_labels, is_hf=True))
        backbone = timm.create_model(f"efficientvit_{variant}", pretrained=False, num_classes=14, in_chans=1)
        networks.append(BenchEntry(plain, "backbone", backbone, 1, 14, False, backbone_of=list(variants)))
    return networks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    threads = args.threads or default_threads()
    torch.set_num_threads(threads)
    results, ratios = measure_group("paper 224px", 224, entries(), args.batch_size, args.repeats, device=args.device)
    print(machine_description(torch.device(args.device), threads))
    print("| network | inference img/s | train img/s |\n|---|---|---|")
    for result in results:
        print(f"| {result.name} | {result.inference_images_per_second:.2f} | {result.train_images_per_second:.2f} |")
    print("\n| model | against | inference ratio | train ratio |\n|---|---|---|---|")
    for ratio in ratios:
        print(f"| {ratio.model} | {ratio.comparator} | {ratio.inference_ratio:.3f} | {ratio.train_ratio:.3f} |")


if __name__ == "__main__":
    main()
