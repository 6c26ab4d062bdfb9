"""Speed and cost benchmarks against a raw PyTorch loop and Avalanche (run with ``python -m benchmarks.NAME``)."""
