"""The networks of the paper's experiments, behind a registry and a factory.

Garipov et al. 2018, "Loss Surfaces, Mode Connectivity, and Fast Ensembling of
DNNs", Section 5 and Appendix: curves are found between modes of ConvFC,
VGG-16/19 (with and without batch norm), PreResNet-110/164 and
WideResNet-28-10, on CIFAR-10/100 (3 x 32 x 32) and, for the small nets,
MNIST-like data (1 x 28 x 28). The architectures follow the paper's official
code (github.com/timgaripov/dnn-mode-connectivity, ``models/``); where this
file departs from it, a comment at the spot says how and why. ``mlp`` is an
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

import inspect
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from modeconn.errors import ConfigError

__all__ = [
    "EXTERNAL",
    "MODELS",
    "create_model",
    "from_spec",
    "list_models",
    "load_weights",
    "model_spec",
    "read_weights",
    "register",
]

log = logging.getLogger(__name__)

# name -> builder(num_classes, in_channels, input_size, **options) -> nn.Module
MODELS: dict[str, Callable[..., nn.Module]] = {}

# The arguments every builder takes first; everything after them is a model option.
_DATA_ARGS = ("num_classes", "in_channels", "input_size")


def register(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator that adds a builder to :data:`MODELS` under ``name``."""

    def decorator(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        params = tuple(inspect.signature(builder).parameters)
        if params[: len(_DATA_ARGS)] != _DATA_ARGS:
            raise TypeError(f"builder for {name!r} must start with arguments {_DATA_ARGS}, has {params}")
        MODELS[name] = builder
        return builder

    return decorator


def list_models() -> list[str]:
    """Names of the registered models, sorted."""
    return sorted(MODELS)


def create_model(name: str, num_classes: int, in_channels: int = 3, input_size: int = 32, **kwargs: Any) -> nn.Module:
    """Build model ``name`` for inputs of shape (B, in_channels, input_size, input_size).

    ``kwargs`` are the model's own options (e.g. ``depth`` for ``preresnet``);
    unknown options, options of the wrong type and invalid values raise
    :class:`~modeconn.errors.ConfigError` with a message that names them.
    ``torchvision/<builder>`` and ``timm/<name>`` build external models (see the module docstring).
    """
    for arg, value in (("num_classes", num_classes), ("in_channels", in_channels), ("input_size", input_size)):
        if not _is_int(value) or value < 1:
            raise ConfigError(f"model {name!r}: {arg} must be a positive integer, got {value!r}")
    if "/" in name:
        return _create_external(name, num_classes, in_channels, input_size, kwargs)
    if name not in MODELS:
        raise ConfigError(
            f"unknown model {name!r}; registered models: {', '.join(list_models())}; "
            "or torchvision/<builder>, timm/<name>"
        )
    builder = MODELS[name]
    _check_options(name, builder, kwargs)
    return builder(num_classes, in_channels, input_size, **kwargs)


def model_spec(name: str, num_classes: int, in_channels: int, input_size: int, args: dict | None = None) -> dict:
    """The plain-data description of a network that checkpoints carry: enough for :func:`from_spec`."""
    return {
        "name": name,
        "num_classes": num_classes,
        "in_channels": in_channels,
        "input_size": input_size,
        "args": dict(args or {}),
    }


def from_spec(spec: dict) -> nn.Module:
    """The network described by a :func:`model_spec` dict (fresh weights)."""
    return create_model(
        spec["name"],
        spec["num_classes"],
        in_channels=spec["in_channels"],
        input_size=spec["input_size"],
        **spec.get("args", {}),
    )


# -----------------------------------------------------------------------------
# torchvision and timm models, and weights from a local file

EXTERNAL = ("torchvision", "timm")
# Arguments that would download weights or that the data decides: refused in model args.
_DOWNLOAD_ARGS = ("pretrained", "weights", "weights_backbone", "pretrained_cfg", "pretrained_cfg_overlay",
                  "checkpoint_path", "pretrained_strict")  # fmt: skip
_DATA_KWARGS = {"num_classes": "the data (the number of class folders / the dataset)", "in_chans": "the data"}


def _create_external(name: str, num_classes: int, in_channels: int, input_size: int, kwargs: dict) -> nn.Module:
    library, _, builder = name.partition("/")
    if library not in EXTERNAL or not builder:
        raise ConfigError(
            f"unknown model {name!r}: use a registered model ({', '.join(list_models())}), "
            "torchvision/<builder> (e.g. torchvision/resnet18) or timm/<name> (e.g. timm/resnet18)"
        )
    for key in kwargs:
        if key in _DOWNLOAD_ARGS:
            raise ConfigError(
                f"model {name!r}: argument {key!r} is not allowed: modeconn never downloads weights at run time. "
                "Save the pretrained weights to a local file (a state dict, torch.save(model.state_dict(), path)) "
                "and pass it as a file (model.weights, or fge.start_files / curve.endpoint_files)"
            )
        if key in _DATA_KWARGS:
            raise ConfigError(f"model {name!r}: argument {key!r} is set from {_DATA_KWARGS[key]}; remove it")
    if library == "torchvision":
        import torchvision.models as tvm  # slow to import; only needed here

        names = tvm.list_models(module=tvm)  # classification builders only
        if builder not in names:
            raise ConfigError(
                f"torchvision has no classification model {builder!r} (model {name!r}). List the names with "
                "`python -c 'import torchvision; print(torchvision.models.list_models(module=torchvision.models))'`"
            )
        if in_channels != 3:
            raise ConfigError(
                f"model {name!r}: torchvision models take 3-channel images, the data has {in_channels}; "
                "use a 3-channel dataset or a timm model (timm/<name> sets in_chans from the data)"
            )
        make = lambda: tvm.get_model_builder(builder)(weights=None, num_classes=num_classes, **kwargs)  # noqa: E731
    else:
        try:
            import timm
        except ImportError:
            raise ConfigError(f"model {name!r} needs the timm package: pip install timm") from None
        if not timm.is_model(builder):
            raise ConfigError(
                f"timm has no model {builder!r} (model {name!r}). Find names with "
                f"`python -c 'import timm; print(timm.list_models(\"*{builder[:6]}*\"))'`"
            )
        make = lambda: timm.create_model(  # noqa: E731
            builder, pretrained=False, num_classes=num_classes, in_chans=in_channels, **kwargs
        )
    try:
        return make()
    except (TypeError, ValueError, AssertionError, RuntimeError) as e:
        raise ConfigError(f"model {name!r} with arguments {kwargs}: {type(e).__name__}: {e}") from None


def read_weights(path: Path | str) -> dict[str, torch.Tensor]:
    """The state dict in a local weights file: a plain state dict, a modeconn checkpoint, or a dict with
    a ``state_dict`` / ``model`` entry; a ``module.`` prefix (DataParallel/DDP) is removed.

    Loaded with ``weights_only=True``; an unreadable file or one without tensors is a ConfigError naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"weights file {path} not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load raises many types on a corrupt or foreign file
        raise ConfigError(f"cannot read weights file {path}: {type(e).__name__}: {str(e)[:200]}") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConfigError(f"weights file {path} holds no state dict (a mapping of parameter names to tensors)")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return obj


def load_weights(
    model: nn.Module, state: dict[str, torch.Tensor], source: str = "weights", new_head: bool = True
) -> list[str]:
    """Load ``state`` into ``model``; returns the names of the tensors left freshly initialised.

    Every tensor of the model must be in ``state`` under its name and shape, with one exception when
    ``new_head``: the classifier head, when the file was trained for another number of classes (e.g.
    ImageNet's 1,000 vs an image folder's 3). Its tensors — those whose shapes differ only in the first
    dimension, in the modules whose output is the model's classes — keep the builder's initialisation,
    and a warning says so. Anything else that differs is a ConfigError naming ``source`` and the tensors.
    """
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        parts = [f"{len(missing)} missing (e.g. {missing[:3]})" if missing else "",
                 f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})" if unexpected else ""]  # fmt: skip
        raise ConfigError(
            f"{source} does not fit the model: {'; '.join(p for p in parts if p)} tensor names. "
            "Is it a state dict of the same architecture (model.name and model.args)?"
        )
    mismatched = [k for k in own if own[k].shape != state[k].shape]
    head = _head_tensors(model)
    bad = [k for k in mismatched if not (new_head and k in head and own[k].shape[1:] == state[k].shape[1:])]
    if bad:
        k = bad[0]
        raise ConfigError(
            f"{source} does not fit the model: {len(bad)} tensor(s) of another shape, e.g. {k!r} "
            f"{list(state[k].shape)} in the file vs {list(own[k].shape)} in the model"
            + ("" if new_head else " (a classifier of another number of classes: fine-tune it on this data first)")
        )
    model.load_state_dict({k: (own[k] if k in mismatched else v) for k, v in state.items()})
    if mismatched:
        classes = {int(state[k].shape[0]) for k in mismatched}
        log.warning(
            "%s: classifier of %s classes, the model has %d: %s re-initialised, every other tensor loaded",
            source, "/".join(map(str, sorted(classes))), int(own[mismatched[0]].shape[0]), ", ".join(mismatched),
        )  # fmt: skip
    return mismatched


def _head_tensors(model: nn.Module) -> set[str]:
    """Names of the tensors of the classifier head: the last Linear (or 1x1 Conv2d) module of the model."""
    last = None
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)):
            last = name
    if last is None:
        return set()
    prefix = f"{last}." if last else ""
    return {k for k in model.state_dict() if k.startswith(prefix) and "." not in k[len(prefix) :]}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_options(name: str, builder: Callable[..., nn.Module], kwargs: dict[str, Any]) -> None:
    """Check ``kwargs`` against the builder's options: known names, types of the defaults."""
    params = list(inspect.signature(builder).parameters.values())[len(_DATA_ARGS) :]
    defaults = {p.name: p.default for p in params}
    accepted = ", ".join(f"{k}={v!r}" for k, v in defaults.items()) or "none"
    for key, value in kwargs.items():
        if key not in defaults:
            raise ConfigError(
                f"model {name!r} got unknown argument {key!r}; accepted arguments (with defaults): {accepted}"
            )
        default = defaults[key]
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = _is_int(value)
        elif isinstance(default, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        elif isinstance(default, str):
            ok = isinstance(value, str)
        else:
            ok = True
        if not ok:
            raise ConfigError(
                f"model {name!r}: argument {key!r} must be {type(default).__name__} "
                f"(default {default!r}), got {value!r} of type {type(value).__name__}"
            )


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _init_weights(model: nn.Module) -> None:
    """The paper code's init: conv weights ~ N(0, 2 / (k * k * out_channels)) (He et
    al. 2015, fan-out), conv biases 0, BN weight 1 and bias 0. Linear layers keep
    PyTorch's default init, as in the paper's code."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# -----------------------------------------------------------------------------
# ConvFC


class ConvFC(nn.Module):
    """Three 5x5 conv layers with max pooling, then three fully connected layers.

    With ``batch_norm`` a BatchNorm2d follows each conv and a BatchNorm1d each
    hidden Linear, before the ReLU (the paper's code has no such variant).
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        input_size: int = 32,
        width: int = 32,
        fc_width: int = 1000,
        batch_norm: bool = False,
    ):
        super().__init__()
        channels = [in_channels, width, 2 * width, 4 * width]
        size = input_size
        conv_layers: list[nn.Module] = []
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            conv_layers.append(nn.Conv2d(c_in, c_out, kernel_size=5, padding=2))
            if batch_norm:
                conv_layers.append(nn.BatchNorm2d(c_out))
            # Pool, then ReLU: the same function and the same gradients as the paper's ReLU-then-pool (max and
            # ReLU commute; where a window's max is ≤ 0 both give 0), with the ReLU on a 4.6x smaller tensor:
            # a training step 4-7% faster on this CPU (README "Speed"), loss and gradients equal bit for bit.
            conv_layers += [nn.MaxPool2d(kernel_size=3, stride=2), nn.ReLU()]
            _require(
                size >= 3,
                f"model 'convfc' needs input_size >= 15 (three 3x3 max pools with stride 2), got {input_size}",
            )
            size = (size - 3) // 2 + 1  # 32 -> 15 -> 7 -> 3, 28 -> 13 -> 6 -> 2
        # Same layer indices as the paper code's conv_part / fc_part when batch_norm=False.
        self.conv_part = nn.Sequential(*conv_layers)
        self.flatten = nn.Flatten()
        flat = channels[-1] * size * size  # 1152 for 3x32x32 with width 32
        fc_layers: list[nn.Module] = []
        for f_in, f_out in ((flat, fc_width), (fc_width, fc_width)):
            fc_layers.append(nn.Linear(f_in, f_out))
            if batch_norm:
                fc_layers.append(nn.BatchNorm1d(f_out))
            fc_layers.append(nn.ReLU())
        fc_layers.append(nn.Linear(fc_width, num_classes))
        self.fc_part = nn.Sequential(*fc_layers)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_part(x)  # (B, 4w, s, s)
        x = self.flatten(x)  # (B, 4w * s * s)
        return self.fc_part(x)  # (B, num_classes)


@register("convfc")
def convfc(
    num_classes: int,
    in_channels: int = 3,
    input_size: int = 32,
    width: int = 32,
    fc_width: int = 1000,
    batch_norm: bool = False,
) -> ConvFC:
    """ConvFC of the paper (Section 5, "ConvFC"; models/convfc.py of its code):
    conv(w)-conv(2w)-conv(4w), 5x5 kernels, each followed by ReLU and a 3x3/2 max
    pool (run as pool then ReLU, the same function), then
    Linear(fc_width)-Linear(fc_width)-Linear(num_classes)."""
    _require(width >= 1, f"model 'convfc': width must be >= 1, got {width}")
    _require(fc_width >= 1, f"model 'convfc': fc_width must be >= 1, got {fc_width}")
    return ConvFC(num_classes, in_channels, input_size, width, fc_width, batch_norm)


# -----------------------------------------------------------------------------
# MLP


class MLP(nn.Module):
    """Flatten, ``depth`` hidden Linear(+BatchNorm1d)+ReLU layers, output Linear."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        input_size: int = 32,
        width: int = 256,
        depth: int = 2,
        batch_norm: bool = False,
    ):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        f_in = in_channels * input_size * input_size
        for _ in range(depth):
            layers.append(nn.Linear(f_in, width))
            if batch_norm:
                layers.append(nn.BatchNorm1d(width))
            layers.append(nn.ReLU())
            f_in = width
        layers.append(nn.Linear(f_in, num_classes))
        self.layers = nn.Sequential(*layers)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)  # (B, C, H, W) -> (B, num_classes)


@register("mlp")
def mlp(
    num_classes: int,
    in_channels: int = 3,
    input_size: int = 32,
    width: int = 256,
    depth: int = 2,
    batch_norm: bool = False,
) -> MLP:
    """A fully connected ReLU network with ``depth`` hidden layers of ``width``
    units. Not one of the paper's models: a small, fast model for quick runs."""
    _require(width >= 1, f"model 'mlp': width must be >= 1, got {width}")
    _require(depth >= 0, f"model 'mlp': depth must be >= 0, got {depth}")
    return MLP(num_classes, in_channels, input_size, width, depth, batch_norm)


# -----------------------------------------------------------------------------
# VGG

_VGG_CONFIGS = {
    16: [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    19: [[64, 64], [128, 128], [256] * 4, [512] * 4, [512] * 4],
}


class VGG(nn.Module):
    """VGG (Simonyan & Zisserman 2015) for small images, with the paper code's
    512-512 classifier.

    Departures from the paper's code: (1) with ``batch_norm`` each conv is
    followed by BatchNorm2d then ReLU. The paper code's VGG16BN/VGG19BN zip a
    list of conv and BN layers with a shorter list of ReLUs, which silently drops
    half of the layers (dnn-mode-connectivity issue #2); we build the intended,
    standard network. (2) Max pools use ``ceil_mode=True`` so 28x28 inputs reach
    1x1 (28 -> 14 -> 7 -> 4 -> 2 -> 1); for 32x32 this changes nothing.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        input_size: int = 32,
        depth: int = 16,
        batch_norm: bool = False,
        dropout: float = 0.5,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        c_in, size = in_channels, input_size
        for stage in _VGG_CONFIGS[depth]:
            for c_out in stage:
                layers.append(nn.Conv2d(c_in, c_out, kernel_size=3, padding=1))
                if batch_norm:
                    layers.append(nn.BatchNorm2d(c_out))
                layers.append(nn.ReLU())
                c_in = c_out
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True))
            size = math.ceil(size / 2)
        self.features = nn.Sequential(*layers)
        self.flatten = nn.Flatten()
        flat = c_in * size * size  # 512 for 32x32 and 28x28 inputs
        self.classifier = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(flat, 512),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(512, 512),
            nn.ReLU(),
            nn.Linear(512, num_classes),
        )
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (B, 512, s, s), s = 1 for 32x32 and 28x28
        x = self.flatten(x)  # (B, 512 * s * s)
        return self.classifier(x)  # (B, num_classes)


def _vgg(
    name: str, num_classes: int, in_channels: int, input_size: int, depth: int, batch_norm: bool, dropout: float
) -> VGG:
    _require(0.0 <= dropout < 1.0, f"model {name!r}: dropout must be in [0, 1), got {dropout}")
    return VGG(num_classes, in_channels, input_size, depth, batch_norm, dropout)


@register("vgg16")
def vgg16(num_classes: int, in_channels: int = 3, input_size: int = 32, dropout: float = 0.5) -> VGG:
    """VGG-16 without batch norm (paper: VGG16; code: models/vgg.py)."""
    return _vgg("vgg16", num_classes, in_channels, input_size, 16, False, dropout)


@register("vgg16_bn")
def vgg16_bn(num_classes: int, in_channels: int = 3, input_size: int = 32, dropout: float = 0.5) -> VGG:
    """VGG-16 with batch norm after each conv (paper code: VGG16BN, see :class:`VGG`)."""
    return _vgg("vgg16_bn", num_classes, in_channels, input_size, 16, True, dropout)


@register("vgg19")
def vgg19(num_classes: int, in_channels: int = 3, input_size: int = 32, dropout: float = 0.5) -> VGG:
    """VGG-19 without batch norm (paper code: VGG19)."""
    return _vgg("vgg19", num_classes, in_channels, input_size, 19, False, dropout)


@register("vgg19_bn")
def vgg19_bn(num_classes: int, in_channels: int = 3, input_size: int = 32, dropout: float = 0.5) -> VGG:
    """VGG-19 with batch norm after each conv (paper code: VGG19BN, see :class:`VGG`)."""
    return _vgg("vgg19_bn", num_classes, in_channels, input_size, 19, True, dropout)


# -----------------------------------------------------------------------------
# PreResNet


class PreActBasicBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus the shortcut (He et al. 2016b)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.relu(self.bn1(x)))  # (B, planes, H / stride, W / stride)
        out = self.conv2(self.relu(self.bn2(out)))
        residual = x if self.downsample is None else self.downsample(x)
        return out + residual


class PreActBottleneck(nn.Module):
    """BN-ReLU-conv1x1-BN-ReLU-conv3x3-BN-ReLU-conv1x1 (x4 channels) plus the shortcut."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.relu(self.bn1(x)))  # (B, planes, H, W)
        out = self.conv2(self.relu(self.bn2(out)))  # (B, planes, H / stride, W / stride)
        out = self.conv3(self.relu(self.bn3(out)))  # (B, 4 * planes, H / stride, W / stride)
        residual = x if self.downsample is None else self.downsample(x)
        return out + residual


class PreResNet(nn.Module):
    """Pre-activation ResNet for CIFAR: conv3x3(16), three stages of ``n`` blocks
    at 16/32/64 planes (strides 1/2/2), BN-ReLU, global average pool, Linear.

    Parameter names match the paper's code (models/preresnet.py), so its
    checkpoints load with ``load_state_dict``. Its ``AvgPool2d(8)`` is
    ``AdaptiveAvgPool2d(1)`` here (the same on 32x32, and it also works on 28x28).
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        input_size: int = 32,
        block: type[PreActBasicBlock] | type[PreActBottleneck] = PreActBasicBlock,
        n: int = 18,
    ):
        super().__init__()
        self.inplanes = 16
        self.conv1 = nn.Conv2d(in_channels, 16, kernel_size=3, padding=1, bias=False)
        self.layer1 = self._make_layer(block, 16, n, stride=1)
        self.layer2 = self._make_layer(block, 32, n, stride=2)
        self.layer3 = self._make_layer(block, 64, n, stride=2)
        self.bn = nn.BatchNorm2d(64 * block.expansion)
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(64 * block.expansion, num_classes)
        _init_weights(self)

    def _make_layer(
        self, block: type[PreActBasicBlock] | type[PreActBottleneck], planes: int, blocks: int, stride: int
    ) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, kernel_size=1, stride=stride, bias=False),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)  # (B, 16, H, W)
        x = self.layer1(x)  # (B, 16 e, H, W), e = block expansion
        x = self.layer2(x)  # (B, 32 e, H / 2, W / 2)
        x = self.layer3(x)  # (B, 64 e, H / 4, W / 4)
        x = self.relu(self.bn(x))
        x = self.flatten(self.avgpool(x))  # (B, 64 e)
        return self.fc(x)  # (B, num_classes)


@register("preresnet")
def preresnet(
    num_classes: int, in_channels: int = 3, input_size: int = 32, depth: int = 110, block: str = "auto"
) -> PreResNet:
    """Pre-activation ResNet (He et al. 2016, "Identity Mappings in Deep Residual
    Networks") as in the paper's code (models/preresnet.py, from
    bearpaw/pytorch-classification); the paper uses depths 110 and 164.

    ``block="auto"`` is the paper code's rule: depth < 44 uses basic blocks
    (depth = 6n + 2: 20, 32, 38), depth >= 44 uses bottleneck blocks (depth =
    9n + 2: 47, 56, 110, 164). So the paper's PreResNet-110 is a *bottleneck*
    network (12 blocks per stage, ~1.15M parameters), not He et al.'s basic-block
    ResNet-110 (~1.7M); pass ``block="basic"`` for the latter. ``"basic"`` and
    ``"bottleneck"`` force a block type at any valid depth.
    """
    basic_rule = "basic blocks need depth = 6n + 2 (e.g. 20, 32, 56, 110)"
    bottleneck_rule = "bottleneck blocks need depth = 9n + 2 (e.g. 29, 56, 110, 164)"
    if block == "auto":
        block = "bottleneck" if depth >= 44 else "basic"
        hint = (
            "; with block='auto' (the paper code's rule) depth < 44 uses basic blocks "
            "and depth >= 44 uses bottleneck blocks"
        )
    elif block in ("basic", "bottleneck"):
        hint = ""
    else:
        raise ConfigError(f"model 'preresnet': block must be 'auto', 'basic' or 'bottleneck', got {block!r}")
    if block == "basic":
        _require(depth >= 8 and (depth - 2) % 6 == 0, f"model 'preresnet': invalid depth {depth}: {basic_rule}{hint}")
        return PreResNet(num_classes, in_channels, input_size, PreActBasicBlock, (depth - 2) // 6)
    _require(depth >= 11 and (depth - 2) % 9 == 0, f"model 'preresnet': invalid depth {depth}: {bottleneck_rule}{hint}")
    return PreResNet(num_classes, in_channels, input_size, PreActBottleneck, (depth - 2) // 9)


# -----------------------------------------------------------------------------
# WideResNet


class WideBasic(nn.Module):
    """Pre-activation wide block: BN-ReLU-conv3x3-dropout-BN-ReLU-conv3x3 plus shortcut.

    As in the paper's code (models/wide_resnet.py, from meliketoy/wide-resnet.pytorch):
    convs have biases, and the stride sits on the second conv.
    """

    def __init__(self, in_planes: int, planes: int, dropout: float, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, padding=1, bias=True)
        self.dropout = nn.Dropout(dropout)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=True)
        self.relu = nn.ReLU()
        self.shortcut = nn.Sequential()  # identity
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=True),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.dropout(self.conv1(self.relu(self.bn1(x))))  # (B, planes, H, W)
        out = self.conv2(self.relu(self.bn2(out)))  # (B, planes, H / stride, W / stride)
        return out + self.shortcut(x)


class WideResNet(nn.Module):
    """WRN-depth-k: conv3x3(16), three stages of n = (depth - 4) / 6 wide blocks at
    16k/32k/64k planes (strides 1/2/2), BN-ReLU, global average pool, Linear.

    Parameter names match the paper's code. Departures: the final BN uses
    PyTorch's default momentum (the code's ``momentum=0.9`` only changes how
    running statistics are averaged, which the curve code recomputes anyway),
    ``F.avg_pool2d(8)`` is ``AdaptiveAvgPool2d(1)`` so 28x28 inputs work, and
    convs get the He fan-out init like the other models (the code leaves
    PyTorch's default).
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        input_size: int = 32,
        depth: int = 28,
        widen_factor: int = 10,
        dropout: float = 0.0,
    ):
        super().__init__()
        n = (depth - 4) // 6
        stages = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.in_planes = stages[0]
        self.conv1 = nn.Conv2d(in_channels, stages[0], kernel_size=3, padding=1, bias=True)
        self.layer1 = self._wide_layer(stages[1], n, dropout, stride=1)
        self.layer2 = self._wide_layer(stages[2], n, dropout, stride=2)
        self.layer3 = self._wide_layer(stages[3], n, dropout, stride=2)
        self.bn1 = nn.BatchNorm2d(stages[3])
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.linear = nn.Linear(stages[3], num_classes)
        _init_weights(self)

    def _wide_layer(self, planes: int, blocks: int, dropout: float, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (blocks - 1):
            layers.append(WideBasic(self.in_planes, planes, dropout, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)  # (B, 16, H, W)
        x = self.layer1(x)  # (B, 16k, H, W)
        x = self.layer2(x)  # (B, 32k, H / 2, W / 2)
        x = self.layer3(x)  # (B, 64k, H / 4, W / 4)
        x = self.relu(self.bn1(x))
        x = self.flatten(self.avgpool(x))  # (B, 64k)
        return self.linear(x)  # (B, num_classes)


@register("wideresnet")
def wideresnet(
    num_classes: int,
    in_channels: int = 3,
    input_size: int = 32,
    depth: int = 28,
    widen_factor: int = 10,
    dropout: float = 0.0,
) -> WideResNet:
    """Wide ResNet (Zagoruyko & Komodakis 2016) as in the paper's code
    (models/wide_resnet.py); the paper uses WRN-28-10 without dropout."""
    _require(
        depth >= 10 and (depth - 4) % 6 == 0,
        f"model 'wideresnet': invalid depth {depth}: depth must be 6n + 4 with n >= 1 (e.g. 10, 16, 22, 28, 40)",
    )
    _require(widen_factor >= 1, f"model 'wideresnet': widen_factor must be >= 1, got {widen_factor}")
    _require(0.0 <= dropout < 1.0, f"model 'wideresnet': dropout must be in [0, 1), got {dropout}")
    return WideResNet(num_classes, in_channels, input_size, depth, widen_factor, dropout)
