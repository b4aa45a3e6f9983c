"""The tokendealer benchmark (issue 8): ``python -m benchmarks.run`` / ``make bench``.

See benchmarks/README.md for what it starts, what it measures and what the
figures mean.
"""
