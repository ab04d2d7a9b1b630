"""Which raw labels are one class: trimmed, compared as numbers when every label is one, and folded by
letter case only when asked (`validate.fold_label_case`).

Validation builds the mapping (raw spelling -> class name) and records it in its report; preprocessing
applies that same mapping, so both steps see the same classes. A merge is never silent: `merges` lists
each class that more than one spelling fell into, with the rows of each.
"""
from __future__ import annotations

import math
import re
from typing import Iterable, Optional

import pandas as pd

# Plain decimal notation only: float() would also take "nan", "inf" and "1_000", which are words here.
NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def as_number(label: str) -> Optional[float]:
    s = label.strip()
    if not NUMBER.fullmatch(s):
        return None
    value = float(s) + 0.0  # + 0.0 makes -0 the same class as 0
    return value if math.isfinite(value) else None


def number_name(value: float) -> str:
    """The class name of a numeric label: '0' for 0, 0.0 and -0; '0.5' for .50."""
    return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)


def _folded_names(counts: pd.Series, trimmed: dict[str, str], pinned: list[str]) -> dict[str, str]:
    """Each case group takes the spelling validate.labels pins, else its most frequent (ties: sorted first)."""
    rows: dict[str, dict[str, int]] = {}
    for raw, n in counts.items():
        spellings = rows.setdefault(trimmed[raw].casefold(), {})
        spellings[trimmed[raw]] = spellings.get(trimmed[raw], 0) + int(n)
    chosen = {key: min(s, key=lambda name: (-s[name], name)) for key, s in rows.items()}
    for key in chosen:
        same = [p for p in pinned if p.casefold() == key]
        if len(same) == 1:
            chosen[key] = same[0]
    return {raw: t if t in pinned else chosen[t.casefold()] for raw, t in trimmed.items()}


def label_mapping(labels: pd.Series, pinned: Optional[list[str]], fold_case: bool) -> dict[str, str]:
    """{raw label: class name} for each raw label whose class name differs from it; blank labels map to ''."""
    counts = labels.dropna().astype(str).value_counts()
    trimmed = {raw: raw.strip() for raw in counts.index if raw.strip()}
    pinned = list(pinned or [])
    numbers = {raw: as_number(raw) for raw in trimmed}
    if trimmed and all(v is not None for v in numbers.values()):
        by_number: dict[float, str] = {}
        for p in pinned:  # pinned labels are compared as numbers too; the first spelling names the class
            if (n := as_number(p)) is not None:
                by_number.setdefault(n, p)
        names = {raw: by_number.get(n, number_name(n)) for raw, n in numbers.items()}
    elif fold_case:
        names = _folded_names(counts[list(trimmed)], trimmed, pinned)
    else:
        names = trimmed
    return {raw: names.get(raw, "") for raw in counts.index if names.get(raw, "") != raw}


def apply_mapping(labels: pd.Series, mapping: dict[str, str]) -> pd.Series:
    """The class of each row; a blank label is a missing one (None)."""
    return labels.astype(object).map(lambda v: mapping.get(v, v) or None if isinstance(v, str) else v)


def merges(labels: pd.Series, mapping: dict[str, str]) -> dict[str, dict[str, int]]:
    """{class: {raw spelling: rows}} for every class that two or more raw spellings became."""
    spellings: dict[str, dict[str, int]] = {}
    for raw, n in labels.dropna().astype(str).value_counts().sort_index().items():
        spellings.setdefault(mapping.get(raw, raw), {})[raw] = int(n)
    return {name: s for name, s in sorted(spellings.items()) if name and len(s) > 1}


def describe_merges(merged: dict[str, dict[str, int]]) -> str:
    rows = lambda n: f"{n} row{'' if n == 1 else 's'}"  # noqa: E731
    return "; ".join(f"{name!r} <- " + ", ".join(f"{raw!r} ({rows(n)})" for raw, n in s.items()) for name, s in merged.items())


def case_variants(names: Iterable[str]) -> list[list[str]]:
    """Groups of class names that differ only in letter case, e.g. [['Positive', 'positive']]."""
    groups: dict[str, list[str]] = {}
    for name in sorted(set(names)):
        groups.setdefault(name.casefold(), []).append(name)
    return [g for g in groups.values() if len(g) > 1]
