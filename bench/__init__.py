"""Benchmark harness: plain pytest vs pytest-xdist vs conveyor on synthetic suites.

Run it with `python -m bench --help`; docs/benchmarks.md explains each suite.
"""
