"""Measurements: the knowledge-quality layer probe, ``bench`` (cost and speed) and ``compare``."""
