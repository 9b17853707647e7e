"""``kdcompress.quality``: the knowledge-quality metric under the name the public contract gives it.

The metric lives in :mod:`kdcompress.probe.quality`, beside the layer probe that uses it; this module
keeps ``from kdcompress.quality import knowledge_quality`` working for users' own scripts.
"""

from kdcompress.probe.quality import balanced_indices, knowledge_quality, select_layers

__all__ = ["balanced_indices", "knowledge_quality", "select_layers"]
