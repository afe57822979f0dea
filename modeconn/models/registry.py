"""The registry of architectures and the factory: a name and its arguments -> a fresh ``nn.Module``.

Every builder takes the data's shape first (``num_classes``, ``in_channels``, ``input_size``), then its
own options with defaults; :func:`create_model` checks the options against the builder's signature
(names, types of the defaults) so that a mistyped option is a clear error, not a traceback.
``torchvision/<builder>`` and ``timm/<name>`` go to :mod:`modeconn.models.external`. A checkpoint carries
:func:`model_spec`, enough for :func:`from_spec` to rebuild the network.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from modeconn.errors import ConfigError

from .external import EXTERNAL, create_external

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
    ``torchvision/<builder>`` and ``timm/<name>`` build external models (:mod:`modeconn.models.external`).
    """
    for arg, value in (("num_classes", num_classes), ("in_channels", in_channels), ("input_size", input_size)):
        if not _is_int(value) or value < 1:
            raise ConfigError(f"model {name!r}: {arg} must be a positive integer, got {value!r}")
    if "/" in name:
        library, _, external = name.partition("/")
        if library not in EXTERNAL or not external:
            raise ConfigError(
                f"unknown model {name!r}: use a registered model ({', '.join(list_models())}), "
                "torchvision/<builder> (e.g. torchvision/resnet18) or timm/<name> (e.g. timm/resnet18)"
            )
        return create_external(name, num_classes, in_channels, input_size, kwargs)
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


def require(ok: bool, message: str) -> None:
    """A builder's check of its options: ``message`` as a :class:`~modeconn.errors.ConfigError` unless ``ok``."""
    if not ok:
        raise ConfigError(message)
