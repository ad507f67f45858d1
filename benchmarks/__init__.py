"""Benchmarks and the scale-out harness: tooling that lives beside the package, not in the wheel.

``image-search bench ...`` runs them from a checkout of the repository.
"""
