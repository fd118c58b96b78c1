"""Benchmarks of zpeer on loopback: `python bench/run.py` (see README: Benchmarks)."""
