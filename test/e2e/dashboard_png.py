"""The Grafana dashboard plotted from Prometheus data, one subplot per panel (a picture
of what the dashboard shows, for docs/; `make dashboard-png`). Time series panels are
lines per series named by the panel's legend format; table panels list their rows."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

Series = tuple[str, list[tuple[float, float]]]


def legend(fmt: str, labels: Mapping[str, str]) -> str:
    text = re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt or "")
    return text or ",".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != "__name__")


def plot(panels: Sequence[Mapping[str, Any]], data: Mapping[int, list[Series]], out: Path) -> None:
    """`data`: per panel id, its series (legend, [(t, value)]) from a range query."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [p for p in panels if p["type"] != "row"]
    cols = 2
    rows = math.ceil(len(shown) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(16, 3.2 * rows), squeeze=False)
    fig.suptitle("Aviator — the quick-start in the cluster in a box", fontsize=15)
    for ax, panel in zip(axes.flat, shown, strict=False):
        ax.set_title(panel["title"], fontsize=10, loc="left")
        series = data.get(panel["id"], [])
        if panel["type"] == "table":
            ax.axis("off")
            lines = [name for name, _ in series][:12] or ["(no rows)"]
            ax.text(0, 1, "\n".join(lines), va="top", family="monospace", fontsize=7)
            continue
        t0 = min((pts[0][0] for _, pts in series if pts), default=0.0)
        for name, pts in series[:10]:
            ax.plot([t - t0 for t, _ in pts], [v for _, v in pts], label=name, linewidth=1.2)
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
        ax.set_xlabel("seconds", fontsize=8)
        ax.set_ylabel(unit, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if series:
            ax.legend(fontsize=6, loc="upper left")
    for ax in list(axes.flat)[len(shown) :]:
        ax.axis("off")
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
