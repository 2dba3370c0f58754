"""brainmap's speed and memory benchmarks: ``python -m benchmarks [NAME ...]`` (see README)."""
