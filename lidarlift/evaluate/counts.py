"""Additive counts: every quality figure is kept as counts per keyframe and shard, summed, then divided.

Counts are plain JSON (numbers, lists of numbers, nested dicts) so per-shard evaluation files merge
exactly: numbers add, lists add element-wise, dicts recurse.
"""
from __future__ import annotations

from typing import Any, Iterable


def add(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """A new dict: ``a`` + ``b`` (numbers add, lists add element-wise, dicts recurse, other values of
    ``a`` are kept)."""
    out = dict(a)
    for key, v in b.items():
        if key not in out or out[key] is None:
            out[key] = v
        elif isinstance(v, dict):
            out[key] = add(out[key], v)
        elif isinstance(v, list):
            out[key] = _add_lists(out[key], v)
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[key] = out[key] + v
    return out


def _add_lists(a: list, b: list) -> list:
    if len(a) != len(b):
        raise ValueError(f"cannot add count lists of lengths {len(a)} and {len(b)}")
    return [_add_lists(x, y) if isinstance(x, list) else x + y for x, y in zip(a, b)]


def total(items: Iterable[dict[str, Any] | None]) -> dict[str, Any]:
    """The sum of many count dicts (None items are left out)."""
    out: dict[str, Any] = {}
    for it in items:
        if it:
            out = add(out, it)
    return out


def ratio(a: float, b: float) -> float | None:
    """a / b, None where b is 0 (a figure with nothing to measure)."""
    return float(a) / float(b) if b else None
