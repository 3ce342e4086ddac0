"""Benchmarks: each prints JSON lines with the machine's own peak measured in the same run."""
