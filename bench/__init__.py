"""Benchmarks of zpeer on loopback: `python bench/run.py` (see bench/README.md)."""
