"""Benchmarks: the op against its memory floor and its peers, and the model's training step."""
