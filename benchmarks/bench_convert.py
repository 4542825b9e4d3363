"""Benchmark: ChestX-ray14 conversion, where its time goes, how far its pixels are from the earlier conversion's,
and how fast the stored images are read back for training (issue 18).

Sources are real NIH ChestX-ray14 PNGs: the 15 untouched 1024-px originals and the 400 images at 512 px of
`/work/shared/data/nih_cxr14_sample` (`--sample-dir`), or, without it, the 1024-px fixture in `tests/fixtures`.
Four sections (`--sections`), each printing Markdown tables:

- `stages`: median time per image of each step (decode, the earlier float Lanczos, integer reduction, 8-bit
  Lanczos, PNG/JPEG encoding, `datasets` writing), and whole pipelines: the naive PIL one (decode, Lanczos in 8 bit,
  PNG at zlib's default level), the earlier conversion's (`previous_encode`) and today's (`encode_radiograph`).
- `pixels`: max, 99.9th percentile and mean absolute difference, in 8-bit levels, of each resize option against
  the earlier conversion's output, on the 15 originals (-> 512, 256, 224 px), the 400 512-px images (-> 256, 224)
  and JPEG copies of the originals (DCT-scaled decoding, CheXpert's case).
- `convert`: `convert_chestxray14` end to end on raw trees in NIH's layout (the originals copied under distinct
  names), N and 2N images, each in a fresh process: the rate at the margin, N / (t(2N) - t(N)), leaves out start-up
  (imports, table reading, forking workers); per `--num-proc`, beside the naive pipeline measured in the same run
  (one process), with the main process's peak memory. Repeats alternate the settings, so load changes hit all.
- `read`: reading + collating at 224 px (the cr_msnet paper processor, batches of 32, one torch thread) from
  datasets stored at `--read-size` px in png and raw: as evaluation reads (`eval_transform`), as training reads
  with the MXA-EfficientViT recipe's augmentation (in the loader, or only read for augmentation on the device)
  beside the reader before issue 18 (torchvision's transforms per image at the stored size), with the time split
  into formatting + decoding, the processor and the batched augmentation.

    OMP_NUM_THREADS=1 python benchmarks/bench_convert.py --images 150 --num-proc 1 2 --repeats 3
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "nih_cxr14" / "00000493_000_fullres.png"
SAMPLE_DIR = Path("/work/shared/data/nih_cxr14_sample")
HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]\n"
)
FINDINGS = ("No Finding", "Effusion", "Atelectasis|Mass", "Pneumothorax", "Infiltration")
LANCZOS = Image.Resampling.LANCZOS


def load() -> str:
    """The machine's load averages (1, 5, 15 min), for the record."""
    return "/".join(f"{value:.1f}" for value in os.getloadavg())


def median_ms(function: Callable[[Any], Any], items: Sequence[Any], repeats: int) -> float:
    """Median over `repeats` passes of the mean time per item of `function(item)`, in milliseconds."""
    passes = []
    for _ in range(repeats):
        start = time.perf_counter()
        for item in items:
            function(item)
        passes.append((time.perf_counter() - start) / len(items) * 1000)
    return statistics.median(passes)


# --------------------------------------------------------------------------------------------- pipelines


def previous_encode(path: Path, size: int) -> bytes:
    """The conversion before issue 18 (for comparison only): the whole image read as float32 grey in [0, 1], resized
    with Lanczos in float, rounded to 8 bits and written as PNG at zlib level 1 (JPEG quality 95 for JPEG sources)."""
    from hf_cxr.imaging import load_radiograph

    data = path.read_bytes()
    grey = load_radiograph(data)
    height, width = grey.shape
    scale = size / min(width, height)
    new_size = (max(round(width * scale), 1), max(round(height * scale), 1))
    resized = np.asarray(Image.fromarray(grey).resize(new_size, LANCZOS), dtype=np.float32)
    pixels = Image.fromarray(np.clip(np.rint(resized * 255), 0, 255).astype(np.uint8))
    buffer = io.BytesIO()
    if Image.open(io.BytesIO(data)).format == "JPEG":
        pixels.save(buffer, format="JPEG", quality=95)
    else:
        pixels.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def naive_encode(path: Path, size: int) -> bytes:
    """The naive PIL pipeline the issue measures against: decode, Lanczos in 8 bit, PNG at zlib's default level."""
    image = Image.open(path)
    image.load()
    buffer = io.BytesIO()
    image.resize((size, size), LANCZOS).save(buffer, format="PNG")
    return buffer.getvalue()


def decoded(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)), dtype=np.float64)


# --------------------------------------------------------------------------------------------- sources


def sources(sample_dir: Path) -> tuple[list[Path], list[Path]]:
    """(1024-px originals, 512-px images): the sample's, or the one 1024-px fixture and no 512-px images."""
    fullres = sorted((sample_dir / "images_fullres").glob("*.png"))
    if not fullres:
        return [FIXTURE], []
    return fullres, sorted((sample_dir / "images_512").glob("*.png"))


def make_tree(root: Path, count: int, images: Sequence[Path]) -> None:
    """`count` images (the sources in turn) of `count // 2` patients, two studies each, in NIH's layout; 1/5 of
    the patients in the test list."""
    folder = root / "images_001" / "images"
    folder.mkdir(parents=True)
    rows, train_val, test = [], [], []
    for index in range(count):
        patient, follow_up = index // 2 + 1, index % 2
        name = f"{patient:08d}_{follow_up:03d}.png"
        shutil.copyfile(images[index % len(images)], folder / name)
        rows.append(f"{name},{FINDINGS[index % 5]},{follow_up},{patient},50,F,PA,2500,2048,0.168,0.168\n")
        (test if patient % 5 == 0 else train_val).append(name)
    (root / "Data_Entry_2017_v2020.csv").write_text(HEADER + "".join(rows))
    (root / "train_val_list.txt").write_text("\n".join(train_val) + "\n")
    (root / "test_list.txt").write_text("\n".join(test) + "\n")


# --------------------------------------------------------------------------------------------- stages


def stages(fullres: list[Path], size: int, repeats: int) -> list[tuple[str, float]]:
    """Median ms per image of each step and pipeline, on the 1024-px originals stored at `size` px."""
    from hf_cxr.data.storage import PNG_OPTIONS, downsize, encode_radiograph
    from hf_cxr.imaging import load_radiograph

    datas = [path.read_bytes() for path in fullres]

    def decode(data: bytes) -> Image.Image:
        image = Image.open(io.BytesIO(data))
        image.load()
        return image

    images = [decode(data) for data in datas]
    greys = [load_radiograph(data) for data in datas]
    target = (size, size)
    small = [downsize(image, target) for image in images]

    def png(image: Image.Image, **options: Any) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", **options)
        return buffer.getvalue()

    def jpeg(image: Image.Image) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=95)
        return buffer.getvalue()

    jpeg_datas = [jpeg(image) for image in images]

    def draft_decode(data: bytes) -> Image.Image:
        image = Image.open(io.BytesIO(data))
        image.draft("L", target)
        image.load()
        return image

    steps: list[tuple[str, Callable[[Any], Any], Sequence[Any]]] = [
        ("decode PNG (Pillow)", decode, datas),
        ("decode as float32 grey (`load_radiograph`)", load_radiograph, datas),
        ("float Lanczos of the whole image (earlier)", lambda g: Image.fromarray(g).resize(target, LANCZOS), greys),
        ("8-bit Lanczos of the whole image (naive)", lambda i: i.resize(target, LANCZOS), images),
        ("Pillow resize, reducing_gap=2", lambda i: i.resize(target, LANCZOS, reducing_gap=2.0), images),
        ("integer reduction + Lanczos to size (`downsize`)", lambda i: downsize(i, target), images),
        ("PNG encode, zlib level 6 (Pillow's default)", png, small),
        ("PNG encode, zlib level 1", lambda i: png(i, compress_level=1), small),
        ("PNG encode, level 1 + Z_RLE (`PNG_OPTIONS`)", lambda i: png(i, **PNG_OPTIONS), small),
        ("PGM encode (raw)", lambda i: i.save(io.BytesIO(), format="PPM"), small),
        ("JPEG decode, full (1024 px, quality 95)", decode, jpeg_datas),
        (f"JPEG decode, DCT-scaled (`draft`, to >= {size} px)", draft_decode, jpeg_datas),
        ("pipeline: naive (decode, 8-bit Lanczos, PNG level 6)", lambda p: naive_encode(p, size), fullres),
        ("pipeline: earlier conversion (`previous_encode`)", lambda p: previous_encode(p, size), fullres),
        ("pipeline: `encode_radiograph`, png", lambda p: encode_radiograph(p, size), fullres),
        ("pipeline: `encode_radiograph`, raw", lambda p: encode_radiograph(p, size, "raw"), fullres),
        (
            "floor: decode + reduce + PNG level 1",
            lambda d: png(decode(d).reduce(1024 // size), compress_level=1),
            datas,
        ),
    ]
    rows = [(name, median_ms(function, items, repeats)) for name, function, items in steps]
    rows.append(("`datasets` writing (from_generator + save_to_disk), at the margin", writing_ms(small, repeats)))
    return rows


def writing_ms(small: list[Image.Image], repeats: int, count: int = 400) -> float:
    """Median ms per example that `datasets` takes to write already-encoded examples with the ChestX-ray14 features
    (`Dataset.from_generator` + `save_to_disk`), at the margin: (t(2n) - t(n)) / n."""
    import datasets

    from hf_cxr.data.chestxray14 import FEATURES
    from hf_cxr.data.storage import PNG_OPTIONS

    datasets.disable_progress_bars()
    encoded = []
    for image in small:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", **PNG_OPTIONS)
        encoded.append(buffer.getvalue())
    example = {"image_id": "x.png", "labels": [0.0] * 14, "finding_labels": "No Finding", "patient_id": 1,
               "follow_up": 0, "patient_age": 50, "patient_sex": "F", "view_position": "PA", "original_width": 1024,
               "original_height": 1024, "acquisition_width": 2500, "acquisition_height": 2048,
               "acquisition_pixel_spacing": [0.168, 0.168], "bboxes": []}  # fmt: skip

    def generate(n: int) -> Any:
        for index in range(n):
            yield {**example, "image": {"bytes": encoded[index % len(encoded)], "path": None}}

    def write(n: int) -> float:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            part = datasets.Dataset.from_generator(
                generate, gen_kwargs={"n": n}, features=FEATURES, cache_dir=tmp, fingerprint=os.urandom(8).hex(),
                writer_batch_size=200,
            )  # fmt: skip
            part.save_to_disk(str(Path(tmp) / "out"), max_shard_size="50MB")
            return time.perf_counter() - start

    margins = [(write(2 * count) - write(count)) / count * 1000 for _ in range(repeats)]
    return statistics.median(margins)


# --------------------------------------------------------------------------------------------- pixels


def pixel_differences(fullres: list[Path], images_512: list[Path]) -> list[dict[str, Any]]:
    """Each resize option against the earlier conversion's output, in 8-bit levels."""
    from hf_cxr.data.storage import downsize, encode_radiograph

    def reduce_then_float(path: Path, size: int) -> np.ndarray:
        image = Image.open(path).convert("F")
        return np.clip(np.rint(np.asarray(downsize(image, (size, size)))), 0, 255)

    options: dict[str, Callable[[Path, int], np.ndarray]] = {
        "`encode_radiograph` (reduce + 8-bit Lanczos; chosen)": lambda p, s: decoded(encode_radiograph(p, s).data),
        "8-bit Lanczos of the whole image": lambda p, s: np.asarray(Image.open(p).resize((s, s), LANCZOS), float),
        "Pillow resize, reducing_gap=2": lambda p, s: np.asarray(
            Image.open(p).resize((s, s), LANCZOS, reducing_gap=2.0), float
        ),
        "reduce + float Lanczos": reduce_then_float,
    }
    tmp = Path(tempfile.mkdtemp())
    jpegs = []
    for path in fullres:
        target = tmp / f"{path.stem}.jpg"
        Image.open(path).convert("L").save(target, quality=95)
        jpegs.append(target)
    cases = [("1024-px originals", fullres, size) for size in (512, 256, 224)]
    cases += [("512-px images", images_512, size) for size in (256, 224)] if images_512 else []
    rows = []
    for label, paths, size in cases:
        references = [decoded(previous_encode(path, size)) for path in paths]
        for name, option in options.items():
            diff = np.concatenate(
                [np.abs(option(p, size) - ref).ravel() for p, ref in zip(paths, references, strict=True)]
            )
            rows.append(_difference_row(label, len(paths), size, name, diff))
    for size in (512, 256):  # JPEG sources: DCT-scaled decoding + reduction, each stored as JPEG quality 95
        references = [decoded(previous_encode(path, size)) for path in jpegs]
        diff = np.concatenate(
            [
                np.abs(decoded(encode_radiograph(p, size).data) - ref).ravel()
                for p, ref in zip(jpegs, references, strict=True)
            ]
        )
        rows.append(_difference_row("JPEG copies of the originals", len(jpegs), size, "`encode_radiograph`", diff))
    shutil.rmtree(tmp, ignore_errors=True)
    return rows


def _difference_row(label: str, count: int, size: int, option: str, diff: np.ndarray) -> dict[str, Any]:
    return {"images": f"{label} ({count})", "stored px": size, "option": option, "max": int(diff.max()),
            "p99.9": float(np.percentile(diff, 99.9)), "mean": float(diff.mean())}  # fmt: skip


# --------------------------------------------------------------------------------------------- conversion


def run_conversion(root: Path, out: Path, num_proc: int, image_size: int) -> dict[str, float]:
    """`convert_chestxray14` in a child process: its seconds (from the call, not the interpreter start), the CPU
    seconds of the process and its workers, and the main process's peak anonymous and file-mapped RSS, sampled
    from /proc every 50 ms."""
    code = (
        "import resource, threading, time\n"
        "from hf_cxr.data import convert_chestxray14\n"
        "def cpu():\n"
        "    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)\n"
        "    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime\n"
        "peak = {'RssAnon': 0, 'RssFile': 0}\n"
        "def sample():\n"
        "    while True:\n"
        "        for line in open('/proc/self/status'):\n"
        "            key = line.split(':')[0]\n"
        "            if key in peak:\n"
        "                peak[key] = max(peak[key], int(line.split()[1]))\n"
        "        time.sleep(0.05)\n"
        "threading.Thread(target=sample, daemon=True).start()\n"
        "start, cpu_start = time.perf_counter(), cpu()\n"
        f"convert_chestxray14({str(root)!r}, {str(out)!r}, image_size={image_size}, num_proc={num_proc})\n"
        "print('RESULT', time.perf_counter() - start, cpu() - cpu_start, peak['RssAnon'], peak['RssFile'])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    line = next(line for line in result.stdout.splitlines() if line.startswith("RESULT"))
    seconds, cpu_seconds, anon_kib, file_kib = (float(value) for value in line.split()[1:])
    shutil.rmtree(out, ignore_errors=True)
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "peak_anon_mib": anon_kib / 1024,
            "peak_file_mib": file_kib / 1024}  # fmt: skip


def conversion(fullres: list[Path], count: int, num_procs: list[int], image_size: int, repeats: int) -> dict:
    """Margin rates (images/s) per repeat: naive pipeline and each `num_proc`, with the ratios to the naive one."""
    per_repeat: list[dict[str, float]] = []
    memory: dict[int, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        trees = {}
        for n in (count, 2 * count):
            trees[n] = Path(tmp) / f"raw{n}"
            make_tree(trees[n], n, fullres)
        naive_items = [fullres[index % len(fullres)] for index in range(count)]
        for repeat in range(repeats):
            rates: dict[str, float] = {}
            order = num_procs if repeat % 2 == 0 else list(reversed(num_procs))
            rates["naive"] = 1000 / median_ms(lambda p: naive_encode(p, image_size), naive_items, 1)
            for num_proc in order:
                small = run_conversion(trees[count], Path(tmp) / "out", num_proc, image_size)
                large = run_conversion(trees[2 * count], Path(tmp) / "out", num_proc, image_size)
                rates[f"num_proc={num_proc}"] = count / (large["seconds"] - small["seconds"])
                rates[f"num_proc={num_proc} cpu ms"] = (large["cpu_seconds"] - small["cpu_seconds"]) / count * 1000
                rates[f"num_proc={num_proc} whole run {2 * count}"] = 2 * count / large["seconds"]
                memory[num_proc] = large
            per_repeat.append(rates)
            print(json.dumps({"repeat": repeat, "load": load(), **rates}), flush=True)
    return {"per_repeat": per_repeat, "memory": memory}


# --------------------------------------------------------------------------------------------- reading


def pass_rate(read: Callable[[int], Any], count: int, batch_size: int) -> float:
    """Images/s of one pass over `count` rows, `read(first)` reading the batch that starts at row `first`."""
    start = time.perf_counter()
    for first in range(0, count, batch_size):
        read(first)
    return count / (time.perf_counter() - start)


def _batch(dataset: Any, batch_size: int, first: int) -> Any:
    return dataset[first : first + batch_size]


def reading(images_512: list[Path], size: int, repeats: int, batch_size: int = 32) -> list[tuple[str, float, float]]:
    """Images/s (one core) of reading + collating at 224 px from datasets stored at `size` px in png and raw, as
    evaluation reads (`eval_transform`) and as training reads (`TrainingImages` with the MXA-EfficientViT recipe's
    augmentation, the heaviest: in the loader, or only read for the device), beside the reader before issue 18
    (torchvision's transforms image by image at the stored size, then the processor): (what, png, raw)."""
    import datasets
    import torch
    from hf_cxr.modeling.cr_msnet import CRMSNetImageProcessor
    from torch.utils.data import default_collate

    from hf_cxr.data import convert_chestxray14
    from hf_cxr.data.transforms import eval_transform, train_transform
    from hf_cxr.training.augment import augmentation_from_recipe, per_image_augmentation
    from hf_cxr.training.config import load_recipe
    from hf_cxr.training.data import TrainingImages, finish_images

    torch.set_num_threads(1)
    processor = CRMSNetImageProcessor(size=224)
    section = load_recipe("mxa_efficientvit_chexpert").augmentation
    augmentation = augmentation_from_recipe(section)
    results: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        make_tree(Path(tmp) / "source", len(images_512), images_512)
        splits = {}
        for image_format in ("png", "raw"):
            out = Path(tmp) / image_format
            with contextlib.redirect_stdout(io.StringIO()):  # the conversion's table of counts
                convert_chestxray14(Path(tmp) / "source", out, image_size=size, image_format=image_format)
            splits[image_format] = datasets.concatenate_datasets(list(datasets.load_from_disk(str(out)).values()))
        arrays = [np.asarray(image) for image in splits["png"]["image"]]
        grey = [processor.grey_pixel_values(arrays[first : first + batch_size])
                for first in range(0, len(arrays), batch_size)]  # fmt: skip

        def decode_only(batch: dict[str, list[Any]]) -> dict[str, list[np.ndarray]]:
            return {"n": [np.asarray(image) for image in batch["image"]]}

        def processor_only(first: int) -> Any:
            return processor(arrays[first : first + batch_size], return_tensors="pt")

        def augmentation_only(first: int) -> Any:
            batch = grey[first // batch_size]
            seeds = torch.arange(first, first + len(batch))
            return finish_images({"grey_pixel_values": batch, "augmentation_seed": seeds}, processor, augmentation)

        def training_reader(dataset: TrainingImages, first: int) -> Any:
            keys = [(row, row) for row in range(first, min(first + batch_size, len(dataset)))]
            return default_collate(dataset.__getitems__(keys))

        for _ in range(repeats):
            for image_format, split in splits.items():
                rates = results.setdefault(image_format, {})
                evaluation = split.with_transform(eval_transform(processor))
                before = split.with_transform(train_transform(processor, augmentation=per_image_augmentation(section)))
                for what, read in (
                    ("read + collate (eval_transform)", partial(_batch, evaluation, batch_size)),
                    ("format + decode only", partial(_batch, split.with_transform(decode_only), batch_size)),
                    ("training: read + collate grey for the device (TrainingImages, device)",
                     partial(training_reader, TrainingImages(split, processor, augmentation, "device"))),
                    ("training: read + augment + collate in the loader (TrainingImages, cpu)",
                     partial(training_reader, TrainingImages(split, processor, augmentation, "cpu"))),
                    ("before: torchvision per image at stored size + processor (train_transform)",
                     partial(_batch, before, batch_size)),
                ):  # fmt: skip
                    rates.setdefault(what, []).append(pass_rate(read, len(split), batch_size))
                rates.setdefault("processor only (decoded arrays)", []).append(
                    pass_rate(processor_only, len(split), batch_size)
                )
                rates.setdefault("augmentation + normalisation only, batched (finish_images)", []).append(
                    pass_rate(augmentation_only, len(split), batch_size)
                )
        sizes = {name: sum(f.stat().st_size for f in (Path(tmp) / name).rglob("*.arrow")) / 2**20 for name in splits}
    rows = [(what, statistics.median(results["png"][what]), statistics.median(results["raw"][what]))
            for what in results["png"]]  # fmt: skip
    rows.append(("stored size (MiB, Arrow files)", sizes["png"], sizes["raw"]))
    return rows


# --------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", nargs="+", default=["stages", "pixels", "convert", "read"])
    parser.add_argument("--images", type=int, default=150, help="N: the margin is measured between N and 2N images")
    parser.add_argument("--num-proc", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--image-size", type=int, default=512, help="stored size of the 1024-px originals")
    parser.add_argument(
        "--read-size", type=int, nargs="+", default=[256, 224], help="stored sizes for the read section (px)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sample-dir", type=Path, default=SAMPLE_DIR)
    args = parser.parse_args()

    import datasets
    import PIL

    fullres, images_512 = sources(args.sample_dir)
    print(
        f"python {platform.python_version()}, datasets {datasets.__version__}, numpy {np.__version__}, "
        f"pillow {PIL.__version__}, {platform.processor() or platform.machine()}, "
        f"{len(os.sched_getaffinity(0))} CPUs, load {load()}; {len(fullres)} originals, {len(images_512)} at 512 px"
    )
    if "stages" in args.sections:
        rows = stages(fullres, args.image_size, args.repeats)
        naive = dict(rows)["pipeline: naive (decode, 8-bit Lanczos, PNG level 6)"]
        print(f"\nStages, 1024 px -> {args.image_size} px, median ms per image (load {load()}):\n")
        print("| step | ms per image | naive pipeline / this |\n|---|---|---|")
        for name, value in rows:
            print(f"| {name} | {value:.2f} | {naive / value:.2f} |")
    if "pixels" in args.sections:
        rows = pixel_differences(fullres, images_512)
        print(f"\nAbsolute difference from the earlier conversion, 8-bit levels (load {load()}):\n")
        print("| images | stored px | option | max | 99.9th percentile | mean |\n|---|---|---|---|---|---|")
        for row in rows:
            print(f"| {row['images']} | {row['stored px']} | {row['option']} | {row['max']} | {row['p99.9']:.0f} | "
                  f"{row['mean']:.3f} |")  # fmt: skip
    if "convert" in args.sections:
        measured = conversion(fullres, args.images, args.num_proc, args.image_size, args.repeats)
        per_repeat = measured["per_repeat"]
        print(f"\nConversion at the margin ({args.images} -> {2 * args.images} images, 1024 px -> {args.image_size} "
              f"px, medians of {args.repeats} repeats; load {load()}):\n")  # fmt: skip
        print("| pipeline | images/s at the margin | / naive (median of per-repeat ratios) | CPU ms per image at the "
              "margin (all processes) | whole run, images/s | peak anonymous RSS, main (MiB) |\n"
              "|---|---|---|---|---|---|")  # fmt: skip
        naive = statistics.median(r["naive"] for r in per_repeat)
        print(f"| naive PIL, one process | {naive:.1f} | 1.00 | {1000 / naive:.1f} | | |")
        for num_proc in args.num_proc:
            key = f"num_proc={num_proc}"
            rate = statistics.median(r[key] for r in per_repeat)
            ratio = statistics.median(r[key] / r["naive"] for r in per_repeat)
            whole = statistics.median(r[f"{key} whole run {2 * args.images}"] for r in per_repeat)
            cpu_ms = statistics.median(r[f"{key} cpu ms"] for r in per_repeat)
            anon = measured["memory"][num_proc]["peak_anon_mib"]
            print(f"| `convert_chestxray14`, {key} | {rate:.1f} | {ratio:.2f} | {cpu_ms:.1f} | {whole:.1f} | "
                  f"{anon:.0f} |")  # fmt: skip
    if "read" in args.sections and images_512:
        for read_size in args.read_size:
            rows = reading(images_512, read_size, args.repeats)
            print(f"\nReading + collating at 224 px from {read_size}-px storage, images/s on one core "
                  f"(median of {args.repeats}; load {load()}):\n")  # fmt: skip
            print("| what | png | raw | raw / png |\n|---|---|---|---|")
            for what, png, raw in rows:
                print(f"| {what} | {png:.1f} | {raw:.1f} | {raw / png:.2f} |")


if __name__ == "__main__":
    main()
