"""Benchmarks of the run engine; `bench/engine.py` is the entry point (`make bench`)."""
