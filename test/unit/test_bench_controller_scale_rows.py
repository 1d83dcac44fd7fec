"""The controller_scale benchmark's ingestion rows say what they did not count."""

from __future__ import annotations

from bench.controller_scale_bench import Fleet, Ingest, Window, _rows


def _ingestion_note(ingest: Ingest) -> str:
    window = Window(
        seconds=30.0, cpu_s=1.0, rss_bytes=0, writes={}, reconciles=30.0, reconcile_s=0.3
    )
    rows = _rows(Fleet("1 policy x 200 pods", 1, 200), 1.0, 1.0, 1.0, window, window, ingest, 1.0)
    (row,) = [r for r in rows if str(r["metric"]).endswith(": snapshot ingestion")]
    return str(row["note"])


def test_snapshots_left_uncounted_when_the_wait_ended_are_said() -> None:
    note = _ingestion_note(Ingest(1000.0, 10.0, 5.0, sent=100, uncounted=7))
    assert "7 of 100 snapshots not counted within the 60 s wait" in note


def test_a_drain_that_counted_everything_says_nothing_of_it() -> None:
    note = _ingestion_note(Ingest(1000.0, 10.0, 5.0, sent=100))
    assert "not counted" not in note
