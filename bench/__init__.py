"""The kit's benchmarks: `make bench` (or `python -m bench --help`).

Each figure is taken side by side in one run against real RabbitMQ (a vhost of
the benchmark's own) and the local inbox, and reported as a ratio, because
absolute times on a shared machine vary. Results go to bench/results/.
"""
