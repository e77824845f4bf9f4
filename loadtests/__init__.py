"""Load tests (locust scenarios) and the side-by-side benchmark (``make bench``).

Everything here derives its payloads from the served model's feature contract, so it works
unchanged for a swapped-in model. README section "Load tests and benchmark" says how to run it.
"""
