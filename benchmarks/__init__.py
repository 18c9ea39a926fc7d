"""sifluoro benchmarks: ``python -m benchmarks [--quick] [--out results.json]``."""
