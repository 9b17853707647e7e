"""Knowledge quality and the layer probe: which teacher layers hold the knowledge worth distilling.

Core, like :mod:`kdcompress.losses` and :mod:`kdcompress.models`: the feature methods use it (``--align
auto``) and so does ``kdcompress probe-layers``. ``quality`` is the metric Q of one layer's features,
``collect`` gathers a teacher's features layer group by layer group, ``layers`` probes every candidate
layer and chooses the K best (with a result cache).
"""

from kdcompress.probe.quality import balanced_indices, knowledge_quality, select_layers

__all__ = ["balanced_indices", "knowledge_quality", "select_layers"]
