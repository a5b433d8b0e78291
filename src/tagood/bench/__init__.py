"""Benchmark harness: configs, split sources, runner, report writers."""
