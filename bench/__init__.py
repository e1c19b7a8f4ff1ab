"""Benchmarks: each prints a table and saves JSON (performance claims live here, not in tests)."""
