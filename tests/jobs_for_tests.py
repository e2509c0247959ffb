"""Job functions for the worker tests: importable by name, as RQ needs."""

from __future__ import annotations


def explode() -> dict:
    raise RuntimeError("the archive disk is full")


def count_to_three() -> dict:
    return {"counted": 3, "note": "fine"}


def break_down() -> dict:
    raise ValueError("no periodic job runs this")
