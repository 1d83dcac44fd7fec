"""argparse types the commands (`aviator agent`, `aviator controller`) share."""

from __future__ import annotations

import argparse


def positive_float(text: str) -> float:
    """A number above zero."""
    value = float(text)
    if not value > 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"{text} is not > 0")
    return value


def non_negative_float(text: str) -> float:
    """A finite number, zero or above."""
    value = float(text)
    if not 0 <= value < float("inf"):  # also refuses nan
        raise argparse.ArgumentTypeError(f"{text} is not a finite number >= 0")
    return value
