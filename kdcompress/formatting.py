"""Numbers as people read them in tables and reports: SI prefixes and "x times" ratios.

Kept in one place so the report, ``bench`` and ``compare`` print the same quantity the same way.
"""

from __future__ import annotations

_PREFIXES = ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"))


def si(value: float | None, unit: str = "", missing: str = "n/a") -> str:
    """``11.2 M``, ``62.0 MFLOPs``-style text with two decimals; ``missing`` for None."""
    if value is None:
        return missing
    for factor, prefix in _PREFIXES:
        if abs(value) >= factor:
            return f"{value / factor:.2f} {prefix}{unit}"
    return f"{value:.0f} {unit}".rstrip()


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator``, or None when either is missing or zero (no meaningful ratio)."""
    if not numerator or not denominator:
        return None
    return numerator / denominator
