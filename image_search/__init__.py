"""The ``image-search`` command line: sample data, queries and benchmarks."""
