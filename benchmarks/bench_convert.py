"""Benchmark: ChestX-ray14 conversion speed (images/s) and peak memory at two dataset sizes.

Builds raw trees in NIH's layout from one real 1024 x 1024 NIH PNG (tests/fixtures/nih_cxr14), copied under
distinct names with rows in NIH's table format, then runs `build_chestxray14` (default 512 px) in a fresh
process per run and reports wall time, images/s and the process's peak resident memory (ru_maxrss of the
process and its workers). Streaming conversion means the peak must not grow with the number of images.

    python benchmarks/bench_convert.py --sizes 200 800 --num-proc 1
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO / "tests" / "fixtures" / "nih_cxr14" / "00000493_000_fullres.png"
HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]\n"
)
FINDINGS = ("No Finding", "Effusion", "Atelectasis|Mass", "Pneumothorax", "Infiltration")


def make_tree(root: Path, count: int) -> None:
    """`count` images of `count // 2` patients (two studies each), 1/5 of the patients in the test list."""
    folder = root / "images_001" / "images"
    folder.mkdir(parents=True)
    rows, train_val, test = [], [], []
    for index in range(count):
        patient, follow_up = index // 2 + 1, index % 2
        name = f"{patient:08d}_{follow_up:03d}.png"
        shutil.copyfile(SOURCE, folder / name)
        rows.append(f"{name},{FINDINGS[index % 5]},{follow_up},{patient},50,F,PA,2500,2048,0.168,0.168\n")
        (test if patient % 5 == 0 else train_val).append(name)
    (root / "Data_Entry_2017_v2020.csv").write_text(HEADER + "".join(rows))
    (root / "train_val_list.txt").write_text("\n".join(train_val) + "\n")
    (root / "test_list.txt").write_text("\n".join(test) + "\n")


def run_one(root: Path, out: Path, num_proc: int, image_size: int) -> dict:
    """Convert in a child process; its peak RSS (and its workers') is measured alone."""
    code = (
        "import resource, threading, time\n"
        "from hf_cxr.data import build_chestxray14\n"
        "peak = {'RssAnon': 0, 'RssFile': 0}\n"
        "def sample():\n"
        "    while True:\n"
        "        for line in open('/proc/self/status'):\n"
        "            key = line.split(':')[0]\n"
        "            if key in peak:\n"
        "                peak[key] = max(peak[key], int(line.split()[1]))\n"
        "        time.sleep(0.05)\n"
        "threading.Thread(target=sample, daemon=True).start()\n"
        "start = time.perf_counter()\n"
        f"build_chestxray14({str(root)!r}, {str(out)!r}, image_size={image_size}, num_proc={num_proc})\n"
        "elapsed = time.perf_counter() - start\n"
        "kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
        "print('RESULT', elapsed, peak['RssAnon'], peak['RssFile'], kids)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    line = next(line for line in result.stdout.splitlines() if line.startswith("RESULT"))
    elapsed, anon_kib, file_kib, kids_kib = (float(value) for value in line.split()[1:])
    return {
        "seconds": elapsed,
        "peak_anon_mib": anon_kib / 1024,
        "peak_file_mapped_mib": file_kib / 1024,
        "peak_worker_rss_mib": kids_kib / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 800])
    parser.add_argument("--num-proc", type=int, default=1)
    parser.add_argument("--image-size", type=int, default=512)
    args = parser.parse_args()

    import datasets
    import numpy
    import PIL

    print(
        f"python {platform.python_version()}, datasets {datasets.__version__}, numpy {numpy.__version__}, "
        f"pillow {PIL.__version__}, {platform.processor() or platform.machine()}, "
        f"{len(__import__('os').sched_getaffinity(0))} CPUs"
    )
    results = []
    for size in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            root, out = Path(tmp) / "raw", Path(tmp) / "out"
            make_tree(root, size)
            measured = run_one(root, out, args.num_proc, args.image_size)
            output_mib = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 2**20
        row = {"images": size, "num_proc": args.num_proc, "image_size": args.image_size, **measured}
        row["images_per_second"] = size / measured["seconds"]
        row["output_mib"] = output_mib
        results.append(row)
        print(json.dumps(row))
    print(
        "| images | num_proc | seconds | images/s | peak anonymous RSS, main (MiB) | peak file-mapped RSS, main (MiB) "
        "| peak RSS, a worker (MiB) | output (MiB) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for row in results:
        print(
            f"| {row['images']} | {row['num_proc']} | {row['seconds']:.1f} | {row['images_per_second']:.1f} | "
            f"{row['peak_anon_mib']:.0f} | {row['peak_file_mapped_mib']:.0f} | {row['peak_worker_rss_mib']:.0f} | "
            f"{row['output_mib']:.0f} |"
        )


if __name__ == "__main__":
    main()
