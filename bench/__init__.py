"""Benchmarks: one script per subject (``bench_<name>.py``) and the runner ``python -m bench``."""
