"""Speed benchmarks: ``python -m benchmarks.train_speed`` and ``python -m benchmarks.sample_speed``."""
