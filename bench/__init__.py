"""Benchmarks over the real parts; every figure is a ratio against a baseline measured in the same run."""
