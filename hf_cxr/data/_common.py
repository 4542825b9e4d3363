"""Pieces shared by the dataset converters: patient-level splits, atomic output folders, bad-file bookkeeping,
streaming `Dataset` generation and dataset cards (image re-encoding: `hf_cxr.data.storage`).

A converter turns a raw download into items (one per example, paths plus metadata, cheap to hold), splits them by
patient, and gives `generate_dataset_dict` a function that turns one item into one example. That function (reading,
decoding, resizing, encoding: the expensive part) runs in `num_proc` forked worker processes; the main process takes
the examples in order and streams them to Arrow one batch at a time, so memory does not grow with the dataset, the
output does not depend on `num_proc`, and one progress bar counts every image of every split.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import shutil
import string
import sys
import uuid
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from importlib import resources
from itertools import chain, islice
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from tqdm.auto import tqdm

RESEARCH_USE = (
    "Research use only. This dataset and any model trained on it are not medical devices and must not be used "
    "for diagnosis or clinical decisions."
)
SKIPPED_FILES_NAME = "skipped_files.txt"
REPORT_NAME = "conversion_report.json"
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
    fraction, and each stratum is spread over the splits in proportion, as far as its size allows. Raises
    `ValueError` when a fraction is negative or the fractions do not sum to 1 (within 1e-6).
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
class ConversionResult:
    """What a conversion produced: the dataset (as `datasets.load_from_disk(out_dir)` reads it), where it lives,
    the files skipped (`{"path", "reason"}`, sorted by path) and the report written beside it."""

    dataset: datasets.DatasetDict
    out_dir: Path
    skipped: list[dict[str, str]]
    report: dict[str, Any]


@dataclass(frozen=True)
class _Failure:
    """A raw file that could not be converted, as a worker reports it to the main process."""

    path: str
    reason: str


def _attempt(convert_item: Callable[[Any], dict[str, Any]], item: Any) -> dict[str, Any] | _Failure:
    """`convert_item(item)`, with `BadFileError` returned as a `_Failure` (any other exception propagates)."""
    try:
        return convert_item(item)
    except BadFileError as error:
        return _Failure(error.path, error.reason)


def _outcomes(
    convert_item: Callable[[Any], dict[str, Any]],
    items: Iterable[Any],
    pool: ProcessPoolExecutor | None,
    max_pending: int,
) -> Iterator[dict[str, Any] | _Failure]:
    """The outcome of every item, in the items' order: in this process, or in `pool` with at most `max_pending` items
    submitted and not yet consumed (so results never pile up in memory when writing is the slower side)."""
    if pool is None:
        for item in items:
            yield _attempt(convert_item, item)
        return
    remaining = iter(items)
    pending: deque[Future] = deque(pool.submit(_attempt, convert_item, item) for item in islice(remaining, max_pending))
    try:
        while pending:
            outcome = pending.popleft().result()
            pending.extend(pool.submit(_attempt, convert_item, item) for item in islice(remaining, 1))
            yield outcome
    finally:
        for future in pending:
            future.cancel()


class _Stream:
    """The conversion's one ordered stream of outcomes, consumed split after split, with its one progress bar; bad
    files are listed (`skip_bad`) or raised as `BadFileError`."""

    def __init__(self, outcomes: Iterator[dict[str, Any] | _Failure], bar: Any, skip_bad: bool) -> None:
        self.outcomes, self.bar, self.skip_bad = outcomes, bar, skip_bad
        self.skipped: list[dict[str, str]] = []

    def examples(self, count: int) -> Iterator[dict[str, Any]]:
        """The examples of the next `count` items (fewer when files are skipped)."""
        for _ in range(count):
            outcome = next(self.outcomes)
            self.bar.update(1)
            if isinstance(outcome, _Failure):
                if not self.skip_bad:
                    raise BadFileError(outcome.path, outcome.reason)
                self.skipped.append({"path": outcome.path, "reason": outcome.reason})
                self.bar.set_postfix(skipped=len(self.skipped), refresh=False)
                continue
            yield outcome


def _yield_from(examples: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """The generator `Dataset.from_generator` runs; `examples` is an iterator, not a list, so `datasets` keeps the
    split as one shard (it splits list-valued `gen_kwargs` into one shard, and one generator call, per element)."""
    yield from examples


def progress_bar(total: int, description: str, unit: str) -> Any:
    """The conversion's progress bar on stderr: refreshed every second in a terminal, every 30 s when stderr is a
    file or pipe (a log then holds one line, rewritten with carriage returns, ending at 100 %)."""
    interactive = hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
    return tqdm(total=total, desc=description, unit=unit, mininterval=1.0 if interactive else 30.0, file=sys.stderr)


def check_num_proc(num_proc: int | None) -> int | None:
    """`num_proc` if it is None or a positive number of processes. Raises `ValueError` otherwise (a bool, a
    non-integer, or a number below 1)."""
    if num_proc is not None and (isinstance(num_proc, bool) or not isinstance(num_proc, int) or num_proc < 1):
        raise ValueError(f"num_proc must be a positive integer or None, got {num_proc!r}")
    return num_proc


def check_out_dir(out_dir: Path | str, overwrite: bool) -> Path:
    """The resolved output folder of a conversion. Raises `FileExistsError` when it exists and `overwrite` is not
    set. Each converter calls this first, before reading anything, so a taken folder is refused at once."""
    out_dir = Path(out_dir).expanduser().resolve()
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"'{out_dir}' already exists; choose another --out or pass --overwrite to replace it")
    return out_dir


@dataclass(frozen=True)
class DatasetSource:
    """A public dataset's provenance, as every copy hf-cxr converts states it (its `DatasetInfo` and card)."""

    name: str
    """The conversion report's `dataset` and the stem of the default output folder's name (`default_out_dir`)."""
    description: str
    """One line: what the converted copy is."""
    homepage: str
    citation: str
    license: str

    def info(self) -> datasets.DatasetInfo:
        """The `DatasetInfo` written with the converted dataset (research use stated)."""
        return datasets.DatasetInfo(description=f"{self.description} {RESEARCH_USE}", citation=self.citation,
                                    homepage=self.homepage, license=self.license)  # fmt: skip

    def card_fields(self) -> dict[str, str]:
        """The dataset card template's provenance fields."""
        return {"citation": self.citation, "homepage": self.homepage, "license": self.license,
                "research_use": RESEARCH_USE}  # fmt: skip

    def out_dir(self, out_dir: Path | str | None, overwrite: bool) -> Path:
        """The resolved output folder of a conversion: `out_dir`, or a fresh folder in the `datasets` cache when none
        is given. Raises `FileExistsError` when it exists and `overwrite` is not set (`check_out_dir`); each
        converter calls this first, before reading anything, so a taken folder is refused at once."""
        return check_out_dir(out_dir if out_dir is not None else default_out_dir(self.name), overwrite)

    def report(
        self,
        settings: Mapping[str, Any],
        counts: Mapping[str, Any],
        skipped: Sequence[Mapping[str, str]],
        **details: Any,
    ) -> dict[str, Any]:
        """The conversion report written beside the dataset (`conversion_report.json`): the dataset's name, the
        conversion's settings, the counts per split, the converter's own `details`, then the skipped files."""
        return {"dataset": self.name, "settings": settings, "counts": counts, **details, "skipped_files": skipped}


def default_out_dir(name: str) -> Path:
    """Where a converter writes when no folder is given: a fresh folder in the `datasets` cache."""
    return Path(datasets.config.HF_DATASETS_CACHE) / "hf_cxr" / f"{name}-{uuid.uuid4().hex[:12]}"


def generate_dataset_dict(
    out_dir: Path | str,
    splits: Mapping[str, Sequence[Any]],
    convert_item: Callable[[Any], dict[str, Any]],
    features: datasets.Features,
    info: datasets.DatasetInfo,
    *,
    num_proc: int | None,
    writer_batch_size: int,
    summarize: Callable[[datasets.DatasetDict, list[dict[str, str]]], tuple[dict[str, Any], str]],
    skip_bad: bool,
    description: str,
    unit: str = "img",
    overwrite: bool = False,
    already_skipped: Sequence[dict[str, str]] = (),
) -> ConversionResult:
    """Convert every item of every split, stream the examples to Arrow, then publish the folder atomically.

    `convert_item(item)` returns one example (a dict matching `features`), or raises `BadFileError` for a raw file
    that cannot be read. With `num_proc` > 1 it runs in that many forked worker processes (so it must be picklable:
    a module-level function or a `functools.partial` of one), the expensive part of a conversion (reading,
    decoding, resizing, encoding); the main process takes the results in order, so the output does not depend on
    `num_proc`, and writes them. Memory stays bounded: at most 2 x `num_proc` results wait, and `datasets` writes
    `writer_batch_size` examples at a time. One progress bar counts every item of every split; `datasets`' own bars
    are off during the conversion (and restored after).

    A bad file raises `BadFileError` naming it, or, with `skip_bad`, is left out and listed in the card, the report
    and `skipped_files.txt` (with `already_skipped`, files the caller skipped before, e.g. unreadable headers); a
    split whose every file was skipped is left out (and said so). Work happens in a hidden sibling folder
    `.NAME.partial-<id>`; only when every split, the card and the report are written is it renamed to `out_dir`, so
    an interrupted run never leaves a folder that looks complete. `summarize(dataset_dict, skipped)` returns the
    report dict and the README text. Raises `ValueError` when every split is empty, and `RuntimeError` when a worker
    process dies (killed, e.g. for lack of memory).
    """
    out_dir = check_out_dir(out_dir, overwrite)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.parent / f".{out_dir.name}.partial-{uuid.uuid4().hex[:8]}"
    cache_dir, final_dir = staging / "cache", staging / "dataset"
    total = sum(len(items) for items in splits.values())
    workers = max(1, min(num_proc or 1, total))
    bars_were_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    pool = bar = None
    try:
        staging.mkdir()
        if workers > 1:
            pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork"))
            pool.submit(int).result()  # fork the workers now, before the progress bar starts its monitor thread
        bar = progress_bar(total, description, unit)
        every_item = (item for items in splits.values() for item in items)
        stream = _Stream(_outcomes(convert_item, every_item, pool, 2 * workers), bar, skip_bad)
        generated: dict[str, datasets.Dataset] = {}
        for split, items in splits.items():
            examples = stream.examples(len(items))
            first = next(examples, None)
            if first is None:
                if items:
                    print(f"\nsplit '{split}' is empty: all its files were skipped (listed in the card)")
                continue
            try:
                generated[split] = datasets.Dataset.from_generator(
                    _yield_from,
                    features=features,
                    gen_kwargs={"examples": chain([first], examples)},
                    cache_dir=str(cache_dir),
                    split=datasets.NamedSplit(split),
                    fingerprint=uuid.uuid4().hex,
                    writer_batch_size=writer_batch_size,
                )
            except datasets.exceptions.DatasetGenerationError as error:
                if isinstance(error.__cause__, BadFileError):
                    raise error.__cause__ from None
                if isinstance(error.__cause__, BrokenProcessPool):
                    raise RuntimeError(
                        f"a conversion worker process ended abruptly while converting split '{split}' (killed, "
                        "e.g. for lack of memory); run again with a smaller num_proc / --num-proc"
                    ) from error.__cause__
                raise
            generated[split].info.update(info)
        bar.close()
        if not generated:
            raise ValueError("nothing to convert: every split is empty")
        dataset = datasets.DatasetDict(generated)
        skipped = sorted([*already_skipped, *stream.skipped], key=lambda entry: entry["path"])
        report, card = summarize(dataset, skipped)
        dataset.save_to_disk(str(final_dir), max_shard_size=SHARD_SIZE)
        (final_dir / "README.md").write_text(card, encoding="utf-8")
        (final_dir / REPORT_NAME).write_text(strict_json(report), encoding="utf-8")
        if skipped:
            lines = [f"{entry['path']}\t{entry['reason']}" for entry in skipped]
            (final_dir / SKIPPED_FILES_NAME).write_text("\n".join(lines) + "\n", encoding="utf-8")
        del dataset, generated
        if out_dir.exists():
            os.replace(out_dir, staging / "previous")
        os.replace(final_dir, out_dir)
        result = ConversionResult(datasets.load_from_disk(str(out_dir)), out_dir, skipped, report)
    finally:
        if bar is not None:
            bar.close()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(staging, ignore_errors=True)
        if bars_were_on:
            datasets.enable_progress_bars()
    return result


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


# The YAML front matter that opens a fallback card (`render_card`): the Hub reads the size category from it.
FALLBACK_FRONT_MATTER = "---\nsize_categories:\n- $size_category\n---\n\n"


def render_card(template_name: str, fallback: str, **fields: Any) -> str:
    """Fill a `hub_cards/` template (`$name` placeholders). Raises `KeyError` for a placeholder without a field.

    The templates are installed with the package (`hf_cxr.hub_cards`); should one be missing, the card is
    `fallback` (the same fields, the licence, the citation and the research-use statement, no long description)
    after `FALLBACK_FRONT_MATTER`, so `fallback` starts at the card's title and `fields` must hold `size_category`.
    """
    template_path = hub_cards_dir() / template_name
    text = template_path.read_text(encoding="utf-8") if template_path.is_file() else FALLBACK_FRONT_MATTER + fallback
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
