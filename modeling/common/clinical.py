"""Lung-PET-CT-Dx clinical table encoding and histology names: the single source for the converter and the models.

It lives beside the models (not only in `hf_cxr.data`) because a saved MMCAF-Net processor must encode a
patient's clinical values as Hub remote code, where `hf_cxr` cannot be imported. `hf_cxr.data.lung_pet_ct_dx`
imports everything here.

Encoding (7 values in [-1, 1], in `CLINICAL_FEATURE_NAMES` order): sex M +1 / F -1; age and weight linear on a
range (`AGE_RANGE`, `WEIGHT_RANGE_KG` by default; a processor may fit the ranges on a training split), clipped;
T (0-4, Tis = 0), N (0-3), M (0-1) stages by their main number, linear on [0, max]; smoking history +1 / never -1.
A missing value ("", NA, unknown, None) and a stage that "cannot be assessed" (TX, NX, MX) are *missing*: the
feature gets the fill value (0.0, the centre of the range, unless fitted) and mask 0. A value that cannot be
read is an error (`unknown="error"`), or is treated as missing and listed separately (`unknown="missing"`).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Histology by the letter in the patient id (Lung_Dx-A0002 is an adenocarcinoma).
HISTOLOGY: dict[str, str] = {
    "A": "adenocarcinoma",
    "B": "small_cell_carcinoma",
    "E": "large_cell_carcinoma",
    "G": "squamous_cell_carcinoma",
}
# Class order of the two tasks: A vs G (the paper's) and all four classes.
AG_LABELS: tuple[str, ...] = (HISTOLOGY["A"], HISTOLOGY["G"])
ABEG_LABELS: tuple[str, ...] = tuple(HISTOLOGY[letter] for letter in "ABEG")

CLINICAL_FEATURE_NAMES = ("sex", "age", "weight", "t_stage", "n_stage", "m_stage", "smoking")
AGE_RANGE = (20.0, 100.0)
WEIGHT_RANGE_KG = (30.0, 130.0)
STAGE_MAX = {"t_stage": 4, "n_stage": 3, "m_stage": 1}
UNKNOWN_VALUE_RULES = ("error", "missing")
_MISSING = {"", "na", "n/a", "nan", "none", "unknown", "-"}
_STAGE_UNKNOWN = {"x", "tx", "nx", "mx"}  # TNM "cannot be assessed"
_STAGE = re.compile(r"^[tnm]?\s*(is|\d)\s*([a-c]\d?)?$", re.IGNORECASE)
_YES = {"1", "yes", "y", "true", "smoker", "current", "former", "ex-smoker"}
_NO = {"0", "no", "n", "false", "never", "non-smoker", "nonsmoker"}
# Spellings of each feature's key: converter raw keys, dataset-row columns and the archive's table headers
# (compared after Unicode NFKC, which turns the archive's full-width `Ｍ-Stage` into `M-Stage`, and lower-casing).
CLINICAL_KEY_ALIASES: dict[str, tuple[str, ...]] = {
    "sex": ("sex",),
    "age": ("age",),
    "weight": ("weight", "weight_kg", "weight (kg)"),
    "t_stage": ("t_stage", "t-stage", "t"),
    "n_stage": ("n_stage", "n-stage", "n"),
    "m_stage": ("m_stage", "m-stage", "m"),
    "smoking": ("smoking", "smoking_history", "smoking history"),
}


@dataclass
class ClinicalEncoding:
    """One patient's encoded features, their mask (1 = observed) and what was missing or unreadable."""

    values: tuple[float, ...]
    mask: tuple[float, ...]
    missing: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)


def _scale(value: float, low: float, high: float) -> float:
    return float(np.clip(2.0 * (value - low) / (high - low) - 1.0, -1.0, 1.0))


def _is_missing(text: str) -> bool:
    return text.strip().lower() in _MISSING


def normalize_clinical_keys(raw: Mapping[str, Any]) -> dict[str, str]:
    """Any accepted spelling of the 7 keys -> `CLINICAL_FEATURE_NAMES` keys with string values ("" when absent)."""
    by_key = {unicodedata.normalize("NFKC", str(key)).strip().lower(): value for key, value in raw.items()}
    out: dict[str, str] = {}
    for name, aliases in CLINICAL_KEY_ALIASES.items():
        value = next((by_key[alias] for alias in aliases if alias in by_key), None)
        if isinstance(value, float) and np.isnan(value):
            value = None
        out[name] = "" if value is None else str(value)
    return out


def _encode_one(name: str, lowered: str, text: str, where: str, ranges: Mapping[str, Sequence[float]]) -> float:
    """One present value -> [-1, 1]; `ValueError` when it cannot be read."""
    if name == "sex":
        if lowered not in ("m", "male", "f", "female"):
            raise ValueError(f"{where}: sex {text!r} is not M or F")
        return 1.0 if lowered.startswith("m") else -1.0
    if name in ("age", "weight"):
        try:
            number = float(lowered.removesuffix("kg").removesuffix("y").strip())
        except ValueError as error:
            raise ValueError(f"{where}: {name} {text!r} is not a number") from error
        return _scale(number, *ranges[name])
    if name in STAGE_MAX:
        stage_max = int(ranges[name][1])
        match = _STAGE.match(lowered)
        if match is None:
            raise ValueError(f"{where}: {name.replace('_', '-')} {text!r} is not a TNM stage")
        stage = 0 if match.group(1) == "is" else int(match.group(1))
        if stage > stage_max:
            raise ValueError(f"{where}: {name.replace('_', '-')} {text!r} exceeds {stage_max}")
        return _scale(stage, 0, stage_max)
    if lowered not in _YES | _NO:
        raise ValueError(f"{where}: smoking history {text!r} is neither yes/1 nor no/0")
    return 1.0 if lowered in _YES else -1.0


def encode_clinical_values(
    raw: Mapping[str, Any],
    where: str,
    *,
    age_range: Sequence[float] = AGE_RANGE,
    weight_range: Sequence[float] = WEIGHT_RANGE_KG,
    stage_max: Mapping[str, int] | None = None,
    fill_values: Sequence[float] | None = None,
    unknown: str = "error",
) -> ClinicalEncoding:
    """Raw clinical values (any accepted key spelling) -> `ClinicalEncoding` (see the module docstring).

    `fill_values` (7 floats, default zeros) replace missing features; `unknown` is `"error"` or `"missing"`.

    Raises `ValueError` for an `unknown` rule other than those two, and, with `unknown="error"`, naming `where` for
    a present value that cannot be read: a sex other than M/F, an age or weight that is not a number, a T/N/M
    stage that is not a TNM stage or exceeds its maximum, a smoking history other than yes/1 or no/0 (with
    `unknown="missing"` such values are filled and listed in `ClinicalEncoding.unknown` instead).
    """
    if unknown not in UNKNOWN_VALUE_RULES:
        raise ValueError(f"unknown must be one of {UNKNOWN_VALUE_RULES}, got {unknown!r}")
    stage_max = {**STAGE_MAX, **(stage_max or {})}
    ranges = {"age": age_range, "weight": weight_range, **{name: (0, high) for name, high in stage_max.items()}}
    fill = list(fill_values) if fill_values is not None else [0.0] * len(CLINICAL_FEATURE_NAMES)
    texts = normalize_clinical_keys(raw)
    encoding = ClinicalEncoding(values=(), mask=())
    values: list[float] = []
    mask: list[float] = []
    for index, name in enumerate(CLINICAL_FEATURE_NAMES):
        text = texts[name].strip()
        lowered = text.lower()
        if _is_missing(text) or (name in STAGE_MAX and lowered in _STAGE_UNKNOWN):
            encoding.missing.append(name)
            values.append(float(fill[index]))
            mask.append(0.0)
            continue
        try:
            values.append(_encode_one(name, lowered, text, where, ranges))
            mask.append(1.0)
        except ValueError:
            if unknown == "error":
                raise
            encoding.unknown.append(name)
            values.append(float(fill[index]))
            mask.append(0.0)
    encoding.values, encoding.mask = tuple(values), tuple(mask)
    return encoding


def encode_clinical(raw: dict[str, str], where: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Raw clinical texts -> (features in [-1, 1], mask) with the fixed default ranges; missing -> 0, mask 0.

    Values that cannot be read are errors, not guesses (the dataset converter's rule): `ValueError` naming `where`,
    as `encode_clinical_values` with `unknown="error"`.
    """
    encoding = encode_clinical_values(raw, where)
    return encoding.values, encoding.mask
