"""kdcompress: compress image classifiers by knowledge distillation.

Importing the package is cheap on purpose (the command line must start in well under a second), so it
pulls in neither torch nor timm. Where things live:

- :mod:`kdcompress.losses`: the functional distillation losses; :mod:`kdcompress.quality`: the
  knowledge-quality metric of a layer.
- :mod:`kdcompress.models`: importing it registers the CIFAR KD zoo with timm (``cifar_*`` names).
- :mod:`kdcompress.methods`: importing it registers the distillation methods.
- :mod:`kdcompress.train`, :mod:`kdcompress.deploy`, :mod:`kdcompress.analysis`: training runs, deployable
  files, and the measurements (layer probe, benchmarks).
"""

__version__ = "0.1.0"
