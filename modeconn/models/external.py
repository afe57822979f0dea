"""torchvision and timm models behind the registry's factory: ``torchvision/<builder>`` and ``timm/<name>``.

They are built with fresh weights, never a download (torchvision with ``weights=None``, timm with
``pretrained=False``); their keyword arguments pass through, ``num_classes`` (and timm's ``in_chans``) come
from the data. Pretrained weights come from a local file (:mod:`modeconn.models.loading`).
"""

from __future__ import annotations

from torch import nn

from modeconn.errors import ConfigError

EXTERNAL = ("torchvision", "timm")
# Arguments that would download weights or that the data decides: refused in model args.
_DOWNLOAD_ARGS = ("pretrained", "weights", "weights_backbone", "pretrained_cfg", "pretrained_cfg_overlay",
                  "checkpoint_path", "pretrained_strict")  # fmt: skip
_DATA_KWARGS = {"num_classes": "the data (the number of class folders / the dataset)", "in_chans": "the data"}


def create_external(name: str, num_classes: int, in_channels: int, input_size: int, kwargs: dict) -> nn.Module:
    """Build ``name`` = ``<library>/<builder>``, ``library`` one of :data:`EXTERNAL`, with fresh weights.

    Unknown builders, arguments that would download weights or that the data sets, and arguments the
    builder rejects raise :class:`~modeconn.errors.ConfigError` naming them.
    """
    library, _, builder = name.partition("/")
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
