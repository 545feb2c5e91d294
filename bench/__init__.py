"""Benchmarks of the platform (run as ``python -m bench.<name>``; see docs/benchmarks.md)."""
