"""Scoring models on ImageNet and its test variants; usable without training."""
