"""Generators of labelled embeddings with planted structure, for tests, benchmarks and demos."""
