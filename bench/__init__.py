"""Benchmarks: each module is runnable as ``python -m bench.<name>`` from the repository root; ``bench/run_all.py``
runs them all. Every figure is printed next to a baseline measured in the same run."""
