"""Benchmarks of ibkr-worker against the floor of its own stack (run with `python -m bench`)."""
