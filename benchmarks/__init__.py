"""Benchmark scripts (run as files: ``python benchmarks/<script>.py``)."""
