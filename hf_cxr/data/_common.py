"""Pieces shared by the dataset converters: patient-level splits, atomic output folders, image re-encoding,
bad-file bookkeeping, streaming `Dataset` generation and dataset cards.

A converter turns a raw download into items (one per example, paths plus metadata, cheap to hold), splits
them by patient, then streams each split through `Dataset.from_generator` so that pixels are read, resized
and written one batch at a time: memory does not grow with the dataset, and `num_proc` workers share the work.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import string
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from PIL import Image

from hf_cxr.imaging import exif_orientation, load_radiograph

RESEARCH_USE = (
    "Research use only. This dataset and any model trained on it are not medical devices and must not be used "
    "for diagnosis or clinical decisions."
)
SKIPPED_FILES_NAME = "skipped_files.txt"
REPORT_NAME = "conversion_report.json"
_SKIP_LOG_PREFIX = "skipped-"
_ERROR_LOG_PREFIX = "errors-"
_MAX_LISTED = 50
# Arrow shard size of the saved folder. `save_to_disk` holds about a shard in memory while writing it, so this
# bounds the conversion's memory whatever the dataset's size (one big shard would grow with the dataset).
SHARD_SIZE = "50MB"


class MissingFilesError(FileNotFoundError):
    """Files that the raw dataset's own tables list but that are not on disk; `paths` holds all of them."""

    def __init__(self, what: str, paths: Sequence[str]) -> None:
        self.paths = list(paths)
        shown = "\n  ".join(self.paths[:_MAX_LISTED])
        more = f"\n  ... and {len(self.paths) - _MAX_LISTED} more" if len(self.paths) > _MAX_LISTED else ""
        super().__init__(f"{len(self.paths)} {what} missing:\n  {shown}{more}")


class BadFileError(ValueError):
    """A raw file that cannot be read (corrupt, truncated, wrong type): names the file and the reason."""

    def __init__(self, path: Path | str, reason: str) -> None:
        self.path, self.reason = str(path), reason
        super().__init__(f"cannot convert '{path}': {reason} (pass --skip-bad / skip_bad=True to skip such files)")


class PatientLeakError(ValueError):
    """The same patient appears in two splits: evaluation on such splits overstates accuracy."""


def list_message(items: Iterable[Any], limit: int = _MAX_LISTED) -> str:
    """A readable, bounded list for error messages."""
    items = [str(item) for item in items]
    shown = ", ".join(items[:limit])
    return shown + (f" ... and {len(items) - limit} more" if len(items) > limit else "")


def split_by_patient(patient_strata: Mapping[str, str], fractions: Mapping[str, float], seed: int) -> dict[str, str]:
    """Assign every patient to one split, seeded and stratified.

    `patient_strata` maps patient -> stratum (e.g. its class; one constant value for no stratification),
    `fractions` maps split name -> share (summing to 1). The patients of each stratum are shuffled with `seed`
    (from sorted order, so the result depends only on the patients and the seed, not on file-system order),
    the strata are laid end to end, and each patient in turn goes to the split furthest below its share of the
    patients dealt so far (ties to the smaller split). Every split's size is then within one patient of its
    fraction, and each stratum is spread over the splits in proportion, as far as its size allows.
    """
    names = list(fractions)
    shares = np.array([float(fractions[name]) for name in names])
    if (shares < 0).any() or not math.isclose(float(shares.sum()), 1.0, abs_tol=1e-6):
        raise ValueError(f"split fractions must be non-negative and sum to 1, got {dict(fractions)}")
    by_stratum: dict[str, list[str]] = defaultdict(list)
    for patient, stratum in patient_strata.items():
        by_stratum[str(stratum)].append(str(patient))
    ordered: list[str] = []
    for offset, stratum in enumerate(sorted(by_stratum)):
        patients = sorted(by_stratum[stratum])
        ordered += [patients[i] for i in np.random.default_rng([seed, offset]).permutation(len(patients))]
    tie_order = np.argsort(shares, kind="stable")  # smaller splits first
    counts = np.zeros(len(names))
    assignment: dict[str, str] = {}
    for dealt, patient in enumerate(ordered):
        deficit = shares * (dealt + 1) - counts
        deficit[shares == 0] = -np.inf
        best = int(tie_order[0])
        for index in tie_order:  # strictly larger deficit wins, so ties go to the smaller split
            if deficit[index] > deficit[best] + 1e-9:
                best = int(index)
        counts[best] += 1
        assignment[patient] = names[best]
    return assignment


def check_patients_disjoint(split_patients: Mapping[str, Iterable[Any]]) -> None:
    """Raise `PatientLeakError` naming the patients found in more than one split."""
    seen: dict[str, str] = {}
    leaks: dict[str, set[str]] = defaultdict(set)
    for split, patients in split_patients.items():
        for patient in set(map(str, patients)):
            if patient in seen and seen[patient] != split:
                leaks[patient].update({seen[patient], split})
            seen.setdefault(patient, split)
    if leaks:
        detail = list_message(f"{patient} ({'/'.join(sorted(splits))})" for patient, splits in sorted(leaks.items()))
        raise PatientLeakError(f"{len(leaks)} patients appear in more than one split: {detail}")


# --------------------------------------------------------------------------------------------- images


@dataclass(frozen=True)
class StoredImage:
    """An image as it goes into the `Image` feature, with the size it had on disk."""

    data: bytes
    original_width: int
    original_height: int
    width: int
    height: int


def resized_size(width: int, height: int, image_size: int | None) -> tuple[int, int]:
    """The stored size: shorter side `image_size`, aspect ratio kept, never enlarged."""
    if image_size is None or min(width, height) <= image_size:
        return width, height
    scale = image_size / min(width, height)
    return max(round(width * scale), 1), max(round(height * scale), 1)


def encode_radiograph(path: Path, image_size: int | None) -> StoredImage:
    """Read a radiograph file and return the bytes to store, resized so the shorter side is `image_size`.

    Pixels are read at full precision (`load_radiograph`: 8/16-bit, colour to grey, truncated files refused
    with a `ValueError` naming the file) and upright: an EXIF Orientation is applied, as every `datasets`,
    transformers and hf-cxr decoder applies it, so the stored pixels are what the image shows whatever reads
    them later. `original_width`/`original_height` are that displayed (upright) size. Resized images are
    resized in float with Lanczos and written back at the source's bit depth: 8-bit sources as 8-bit, 16-bit
    sources as 16-bit PNG; JPEG sources stay JPEG (quality 95) so the output is not several times larger than
    the input. A file that needs no resizing is stored unchanged, unless its EXIF Orientation turns it: then its
    exact pixels are stored upright as a lossless PNG (with no orientation left to apply).
    """
    data = path.read_bytes()
    grey = load_radiograph(data, name=f"'{path}'")  # upright
    height, width = grey.shape
    with Image.open(io.BytesIO(data)) as probe:
        source_format = probe.format or "PNG"
        sixteen_bit = probe.mode in ("I;16", "I;16B", "I;16L", "I")
        turned = exif_orientation(probe) != 1
    new_width, new_height = resized_size(width, height, image_size)
    resize = (new_width, new_height) != (width, height)
    if not resize and not turned:
        return StoredImage(data, width, height, width, height)
    if resize:
        grey = np.asarray(
            Image.fromarray(grey, mode="F").resize((new_width, new_height), Image.Resampling.LANCZOS), dtype=np.float32
        )
    top = 65535 if sixteen_bit else 255
    pixels = np.clip(np.rint(grey * top), 0, top).astype(np.uint16 if sixteen_bit else np.uint8)
    buffer = io.BytesIO()
    if resize and source_format == "JPEG" and not sixteen_bit:
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
    else:
        Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return StoredImage(buffer.getvalue(), width, height, new_width, new_height)


def encode_or_report(path: Path, image_size: int | None, log_dir: str, skip_bad: bool) -> StoredImage | None:
    """`encode_radiograph`, with an unreadable file reported (and skipped under `skip_bad`, else raised)."""
    try:
        return encode_radiograph(path, image_size)
    except (ValueError, OSError) as error:
        reason = str(error).removeprefix(f"'{path}': ")
        handle_bad_file(log_dir, path, reason, skip_bad)
        return None


# --------------------------------------------------------------------------------------------- bad files


def _append_log(log_dir: str, prefix: str, path: Path | str, reason: str) -> None:
    with open(Path(log_dir) / f"{prefix}{os.getpid()}.jsonl", "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"path": str(path), "reason": reason}) + "\n")


def handle_bad_file(log_dir: str, path: Path | str, reason: str, skip_bad: bool) -> None:
    """Inside a (possibly parallel) generator: log a skipped file, or log the failure and raise it.

    The logs (one file per process) are how the parent learns what happened: `datasets` wraps a worker's
    exception in a generic `DatasetGenerationError`, and skipped files must reach the card.
    """
    if skip_bad:
        _append_log(log_dir, _SKIP_LOG_PREFIX, path, reason)
        return
    _append_log(log_dir, _ERROR_LOG_PREFIX, path, reason)
    raise BadFileError(path, reason)


def read_skipped(log_dir: Path, prefix: str = _SKIP_LOG_PREFIX) -> list[dict[str, str]]:
    """Every file the generators skipped (or, with the error prefix, failed on), sorted by path."""
    entries: list[dict[str, str]] = []
    for log_file in sorted(log_dir.glob(f"{prefix}*.jsonl")):
        entries.extend(json.loads(line) for line in log_file.read_text(encoding="utf-8").splitlines() if line)
    return sorted(entries, key=lambda entry: entry["path"])


# --------------------------------------------------------------------------------------------- writing


def _without_nan(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, np.generic):
        return _without_nan(value.item())
    if isinstance(value, Mapping):
        return {key: _without_nan(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_without_nan(item) for item in value]
    return value


def strict_json(document: Any) -> str:
    """`document` as strict JSON text (indented, newline-terminated): NaN and infinities become `null`, because
    JSON has no NaN and strict parsers (browsers, `jq`, the Hub) refuse the bare `NaN` Python would write."""
    return json.dumps(_without_nan(document), indent=2, allow_nan=False) + "\n"


@dataclass
class SplitPlan:
    """One split to generate: `generator(items=..., log_dir=..., **extra)` yields the examples of `items`."""

    items: list[Any]
    generator: Callable[..., Iterator[dict[str, Any]]]
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class ConversionResult:
    """What a conversion produced: the dataset, where it lives, what was skipped and why."""

    dataset: datasets.DatasetDict
    out_dir: Path
    skipped: list[dict[str, str]]
    report: dict[str, Any]


def _counted(
    items: list[Any], log_dir: str, _generator: Callable[..., Iterator[dict[str, Any]]], _split: str, **extra: Any
) -> Iterator[dict[str, Any]]:
    """Run a split's generator and log how many examples it yielded (a split can end up empty by skipping)."""
    count = 0
    for example in _generator(items=items, log_dir=log_dir, **extra):
        count += 1
        yield example
    with open(Path(log_dir) / f"yielded-{_split}-{os.getpid()}-{uuid.uuid4().hex[:6]}.txt", "w") as handle:
        handle.write(str(count))


def _yielded(log_dir: Path, split: str) -> int:
    return sum(int(path.read_text()) for path in log_dir.glob(f"yielded-{split}-*.txt"))


def check_out_dir(out_dir: Path | str, overwrite: bool) -> Path:
    """The resolved output folder of a conversion; `FileExistsError` when it exists and `overwrite` is not set.
    Each converter calls this first, before reading anything, so a taken folder is refused at once."""
    out_dir = Path(out_dir).expanduser().resolve()
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"'{out_dir}' already exists; choose another --out or pass --overwrite to replace it")
    return out_dir


def default_out_dir(name: str) -> Path:
    """Where `build_*` writes when no folder is given: a fresh folder in the `datasets` cache."""
    return Path(datasets.config.HF_DATASETS_CACHE) / "hf_cxr" / f"{name}-{uuid.uuid4().hex[:12]}"


def generate_dataset_dict(
    out_dir: Path | str,
    plans: Mapping[str, SplitPlan],
    features: datasets.Features,
    info: datasets.DatasetInfo,
    *,
    num_proc: int | None,
    writer_batch_size: int,
    summarize: Callable[[datasets.DatasetDict, list[dict[str, str]]], tuple[dict[str, Any], str]],
    overwrite: bool = False,
    already_skipped: Sequence[dict[str, str]] = (),
) -> ConversionResult:
    """Stream every split to Arrow, then publish the folder atomically.

    Work happens in a hidden sibling folder `.NAME.partial-<id>`; only when every split, the card and the
    report are written is it renamed to `out_dir`, so an interrupted run never leaves a folder that looks
    complete. `summarize(dataset_dict, skipped)` returns the report dict and the README text; `already_skipped`
    are files the caller skipped before generation (e.g. unreadable headers), reported with the others.
    """
    out_dir = check_out_dir(out_dir, overwrite)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.parent / f".{out_dir.name}.partial-{uuid.uuid4().hex[:8]}"
    cache_dir, final_dir, log_dir = staging / "cache", staging / "dataset", staging / "logs"
    try:
        log_dir.mkdir(parents=True)
        splits: dict[str, datasets.Dataset] = {}
        for split, plan in plans.items():
            if not plan.items:
                continue
            workers = max(1, min(num_proc or 1, len(plan.items)))
            try:
                splits[split] = datasets.Dataset.from_generator(
                    _counted,
                    features=features,
                    gen_kwargs={
                        "items": plan.items,
                        "log_dir": str(log_dir),
                        "_generator": plan.generator,
                        "_split": split,
                        **plan.extra,
                    },
                    num_proc=workers if workers > 1 else None,
                    cache_dir=str(cache_dir),
                    split=datasets.NamedSplit(split),
                    fingerprint=uuid.uuid4().hex,
                    writer_batch_size=writer_batch_size,
                )
            except datasets.exceptions.DatasetGenerationError as error:
                failures = read_skipped(log_dir, _ERROR_LOG_PREFIX)
                if failures:
                    raise BadFileError(failures[0]["path"], failures[0]["reason"]) from error
                raise
            except ValueError:
                if _yielded(log_dir, split) == 0 and read_skipped(log_dir):
                    print(f"split '{split}' is empty: all its files were skipped (listed in the card)")
                    continue
                raise
            splits[split].info.update(info)
        if not splits:
            raise ValueError("nothing to convert: every split is empty")
        dataset = datasets.DatasetDict(splits)
        skipped = sorted([*already_skipped, *read_skipped(log_dir)], key=lambda entry: entry["path"])
        report, card = summarize(dataset, skipped)
        dataset.save_to_disk(str(final_dir), max_shard_size=SHARD_SIZE)
        (final_dir / "README.md").write_text(card, encoding="utf-8")
        (final_dir / REPORT_NAME).write_text(strict_json(report), encoding="utf-8")
        if skipped:
            lines = [f"{entry['path']}\t{entry['reason']}" for entry in skipped]
            (final_dir / SKIPPED_FILES_NAME).write_text("\n".join(lines) + "\n", encoding="utf-8")
        del dataset, splits
        if out_dir.exists():
            os.replace(out_dir, staging / "previous")
        os.replace(final_dir, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ConversionResult(datasets.load_from_disk(str(out_dir)), out_dir, skipped, report)


# --------------------------------------------------------------------------------------------- reading


def read_conversion_report(dataset: Any) -> dict[str, Any] | None:
    """The `conversion_report.json` a converter wrote beside a dataset folder (`dataset` name, `settings`,
    `counts`, skipped files), or None for a Hub id, an in-memory dataset or a folder without one."""
    if not isinstance(dataset, (str, os.PathLike)):
        return None
    path = Path(dataset) / REPORT_NAME
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def load_converted(source: str | os.PathLike) -> datasets.DatasetDict:
    """A converted dataset with named splits: a folder `hf-cxr convert` (or `save_to_disk`) wrote, or a dataset id
    `datasets.load_dataset` loads from the Hub.

    Raises `FileNotFoundError` saying what `source` is not (a folder without `dataset_dict.json`, a file, or neither
    a local folder nor a loadable Hub id, with the Hub's reason, e.g. offline mode), and `ValueError` when it holds
    a single `Dataset` instead of named splits.
    """
    text = os.fspath(source)
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "dataset_dict.json").is_file():
            raise FileNotFoundError(
                f"'{text}' is a folder but not a converted dataset with splits (no dataset_dict.json); convert the "
                "raw download with `hf-cxr convert`"
            )
        loaded = datasets.load_from_disk(str(path))
    elif path.exists():
        raise FileNotFoundError(f"'{text}' is a file; a converted dataset is a folder (`hf-cxr convert --out`)")
    else:
        try:
            loaded = datasets.load_dataset(text)
        except (OSError, ValueError) as error:  # offline mode, no such repository, ...
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise FileNotFoundError(
                f"'{text}' is neither a local dataset folder nor a dataset id that could be loaded from the Hub "
                f"({reason})"
            ) from error
    if not isinstance(loaded, datasets.DatasetDict):
        raise ValueError(f"'{text}' holds a single Dataset; training and evaluation need named splits (a DatasetDict)")
    return loaded


# --------------------------------------------------------------------------------------------- cards


def hub_cards_dir() -> Path:
    """The card templates: `hub_cards/`, installed as the package `hf_cxr.hub_cards` (wheel and editable)."""
    return Path(str(resources.files("hf_cxr.hub_cards")))


# The Hub's `size_categories` values (datasets' `size_categories.json`), smallest first, with their upper bounds.
SIZE_CATEGORIES = (
    ("n<1K", 10**3), ("1K<n<10K", 10**4), ("10K<n<100K", 10**5), ("100K<n<1M", 10**6), ("1M<n<10M", 10**7),
    ("10M<n<100M", 10**8), ("100M<n<1B", 10**9), ("1B<n<10B", 10**10), ("10B<n<100B", 10**11),
    ("100B<n<1T", 10**12),
)  # fmt: skip


def size_category(count: int) -> str:
    """The card's `size_categories` value for `count` examples (the rows actually converted)."""
    for name, bound in SIZE_CATEGORIES:
        if count < bound:
            return name
    return "n>1T"


def render_card(template_name: str, fallback: str, **fields: Any) -> str:
    """Fill a `hub_cards/` template (`$name` placeholders; a missing field is an error).

    The templates are installed with the package (`hf_cxr.hub_cards`); should one be missing, the card is
    `fallback` (the same fields, the licence, the citation and the research-use statement, no long description).
    """
    template_path = hub_cards_dir() / template_name
    text = template_path.read_text(encoding="utf-8") if template_path.is_file() else fallback
    return string.Template(text).substitute({key: str(value) for key, value in fields.items()})


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def skipped_section(skipped: Sequence[Mapping[str, str]]) -> str:
    """The card's list of skipped files (every one of them: nothing is dropped silently)."""
    if not skipped:
        return "No file was skipped."
    lines = [f"{len(skipped)} files could not be read and were skipped (`--skip-bad`); also in `{SKIPPED_FILES_NAME}`:"]
    lines += [f"- `{entry['path']}`: {entry['reason']}" for entry in skipped]
    return "\n".join(lines)
