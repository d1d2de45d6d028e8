"""Batch-size benchmark: simulated workloads with known optima, peer policies, and a runner.

Run it with ``python -m bench`` (see `bench.run`).
"""
