"""The built-in strategies: each module registers its classes with :func:`cl_bench.registry.register`."""
