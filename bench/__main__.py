"""Run the benchmark suite and print one table.

Every module `bench/<name>_bench.py` defines `run(quick: bool) -> list[dict]`; each row
has "benchmark", "metric", "value", "unit" and optionally "ratio", "goal", "note".
Absolute times on a shared machine are noisy; ratios measured side by side in one run
are what we track.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys
import time
import traceback
from pathlib import Path

import bench

Row = dict[str, object]
OUT_DIR = Path(__file__).resolve().parent / "out"


def discover() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(bench.__path__) if m.name.endswith("_bench"))


def format_table(rows: list[Row]) -> str:
    headers = ["benchmark", "metric", "value", "unit", "ratio", "goal", "note"]

    def cell(row: Row, key: str) -> str:
        value = row.get(key, "")
        if isinstance(value, float):
            return f"{value:.4g}" if abs(value) < 1e6 else f"{value:.3e}"
        return str(value)

    table = [[cell(r, h) for h in headers] for r in rows]
    widths = [
        max(len(h), *(len(r[i]) for r in table)) if table else len(h) for i, h in enumerate(headers)
    ]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in table]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    parser.add_argument("names", nargs="*", help="benchmarks to run (default: all)")
    args = parser.parse_args(argv)
    names = args.names or discover()
    rows: list[Row] = []
    failed = []
    for name in names:
        module_name = name if name.endswith("_bench") else f"{name}_bench"
        start = time.monotonic()
        print(f"bench: running {module_name} ...", file=sys.stderr, flush=True)
        try:
            module = importlib.import_module(f"bench.{module_name}")
            rows.extend(module.run(args.quick))
        except Exception:
            traceback.print_exc()
            failed.append(module_name)
            rows.append(
                {
                    "benchmark": module_name,
                    "metric": "FAILED",
                    "value": "",
                    "unit": "",
                    "note": "see the traceback above",
                }
            )
        print(f"bench: {module_name} took {time.monotonic() - start:.1f} s", file=sys.stderr)
    print(format_table(rows))
    OUT_DIR.mkdir(exist_ok=True)
    (OUT_DIR / "results.json").write_text(json.dumps(rows, indent=2, default=str))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
