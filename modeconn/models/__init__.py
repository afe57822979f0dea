"""The networks of the paper's experiments, behind a registry and a factory.

Garipov et al. 2018, "Loss Surfaces, Mode Connectivity, and Fast Ensembling of
DNNs", Section 5 and Appendix: curves are found between modes of ConvFC,
VGG-16/19 (with and without batch norm), PreResNet-110/164 and
WideResNet-28-10, on CIFAR-10/100 (3 x 32 x 32) and, for the small nets,
MNIST-like data (1 x 28 x 28). The architectures follow the paper's official
code (github.com/timgaripov/dnn-mode-connectivity, ``models/``); where a
module departs from it, a comment at the spot says how and why. ``mlp`` is an
extra, small model for quick runs and tests.

Every model is built from plain ``torch.nn`` layers and has a pure forward (no
in-place ops, no lazy shapes), because the curve code evaluates it with
``torch.func.functional_call`` on weights that are functions of the curve
parameters, w = phi_theta(t) (eq. 2 and Section 3.3).

    >>> model = create_model("vgg16_bn", num_classes=10)
    >>> model = create_model("convfc", num_classes=10, in_channels=1, input_size=28)
    >>> list_models()
    ['convfc', 'mlp', 'preresnet', 'vgg16', 'vgg16_bn', 'vgg19', 'vgg19_bn', 'wideresnet']

Beyond the registry, ``torchvision/<builder>`` and ``timm/<name>`` build any
torchvision classification model or timm model with fresh weights (never a
download: torchvision with ``weights=None``, timm with ``pretrained=False``);
their keyword arguments pass through, ``num_classes`` (and timm's ``in_chans``)
come from the data. Pretrained weights come from a local file:
:func:`read_weights` + :func:`load_weights`, which keeps a classifier head of
another number of classes freshly initialised (fine-tuning, as for the paper's
ImageNet FGE run from a pretrained ResNet-50, Section 5.4).

    >>> model = create_model("torchvision/resnet18", num_classes=10)
    >>> model = create_model("timm/resnet18", num_classes=10, in_channels=1, input_size=28)
"""

from __future__ import annotations

from .convfc import ConvFC  # importing an architecture registers its builders
from .external import EXTERNAL
from .loading import load_weights, read_weights
from .mlp import MLP
from .preresnet import PreResNet
from .registry import MODELS, create_model, from_spec, list_models, model_spec, register
from .vgg import VGG
from .wideresnet import WideResNet

__all__ = [
    "EXTERNAL",
    "MLP",
    "MODELS",
    "VGG",
    "ConvFC",
    "PreResNet",
    "WideResNet",
    "create_model",
    "from_spec",
    "list_models",
    "load_weights",
    "model_spec",
    "read_weights",
    "register",
]
