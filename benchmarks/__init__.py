"""p2psync benchmarks: real nodes on loopback, raw py-libp2p baselines, core microbenchmarks.

Run ``python -m benchmarks`` (or ``make bench``); ``--quick`` for the small CI
variant, ``--only a,b`` for some scenarios. Results go to
``benchmarks/results/latest.json`` (``quick.json`` in quick mode).
"""
