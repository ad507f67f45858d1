"""The ``image-search`` command line: sample data, queries, the HTTP API, saved searches, model releases and runs.

The benchmarks (``image-search bench``) live beside the package, in ``benchmarks/``, and run from a checkout.
"""
