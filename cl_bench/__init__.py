"""cl-bench: continual-learning strategies, scenarios, metrics and reports on PyTorch Lightning."""
