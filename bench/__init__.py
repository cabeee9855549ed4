"""Benchmarks of vecstore on real embedding sets."""
