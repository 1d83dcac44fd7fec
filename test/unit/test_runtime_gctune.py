"""The controller and the agent raise the collector's first threshold and keep the rest."""

from __future__ import annotations

import gc

from aviator.runtime.gctune import FIRST_THRESHOLD, tune_for_caches


def test_first_threshold_raised_others_kept() -> None:
    before = gc.get_threshold()
    try:
        gc.set_threshold(700, 11, 12)
        tune_for_caches()
        tune_for_caches()
        assert gc.get_threshold() == (FIRST_THRESHOLD, 11, 12)
    finally:
        gc.set_threshold(*before)
