"""Benchmarks: model level against transformers eager, service level against the bare backend."""
