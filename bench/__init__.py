"""Benchmarks: xvmd against Debian 12's fence_virtd, each in its own lo-only network namespace.

Run ``python -m bench [--quick] [--scenarios a,b]``; see ``docs/performance.md``.
"""
