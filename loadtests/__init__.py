"""Load tests (locust scenarios) and the side-by-side benchmark (``make bench``).

Everything here derives its payloads from the served model's feature contract, so it works
unchanged for a swapped-in model. docs/benchmarks.md says how to run it.
"""
