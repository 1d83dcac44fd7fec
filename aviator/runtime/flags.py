"""argparse types the commands (`aviator agent`, `aviator controller`) share."""

from __future__ import annotations

import argparse


def positive_float(text: str) -> float:
    """A number above zero."""
    value = float(text)
    if not value > 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"{text} is not > 0")
    return value
