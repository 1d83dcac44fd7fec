"""Aviator benchmarks: `python -m bench` (make bench) prints one table of figures and ratios."""
