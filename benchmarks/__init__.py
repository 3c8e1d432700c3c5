"""Benchmarks of funcnet against hand-written JAX and its peers.

Run them with `python -m benchmarks.run` (or `funcnet bench`); see docs/benchmarks.md.
"""
