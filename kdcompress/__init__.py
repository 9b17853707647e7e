"""kdcompress: compress image classifiers by knowledge distillation.

Importing the package is cheap on purpose (the command line must start in well under a second), so it
pulls in neither torch nor timm. Where things live:

- core: :mod:`kdcompress.losses` (the functional distillation losses), :mod:`kdcompress.probe` (the
  knowledge-quality metric of a layer and the layer probe), :mod:`kdcompress.models` (importing it
  registers the CIFAR KD zoo with timm, ``cifar_*`` names), :mod:`kdcompress.data`;
- :mod:`kdcompress.methods`: the distillation methods (the registry finds them);
- :mod:`kdcompress.train`, :mod:`kdcompress.deploy`: training runs and deployable files;
- :mod:`kdcompress.analysis`: what consumes runs: ``bench`` and ``compare``;
- :mod:`kdcompress.cli`: the commands.
"""

__version__ = "0.1.0"
