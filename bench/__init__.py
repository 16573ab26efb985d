"""Reproducible benchmarks (``make bench``); see bench/README.md."""
