"""Fuzz and property tests: the pure protocol core and the request pipeline.

See docs/robustness.md.
"""
