"""Throughput and latency benchmarks of the gateway: ``python -m bench.run`` (or ``make bench``)."""
