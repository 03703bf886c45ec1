"""Helpers for tests, benchmarks and the local cluster: real processes, simulated clusters."""
