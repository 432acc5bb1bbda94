"""ShuffleNet architectures and the registry that names them."""

from .base import ShuffleNetBase
from .layers import channel_shuffle
from .registry import ModelSpec, Reference, get_model, get_spec, list_models
from .v1 import ShuffleNetV1
from .v2 import ShuffleNetV2
from .v2_plus import ShuffleNetV2Plus

__all__ = [
    "ModelSpec",
    "Reference",
    "ShuffleNetBase",
    "ShuffleNetV1",
    "ShuffleNetV2",
    "ShuffleNetV2Plus",
    "channel_shuffle",
    "get_model",
    "get_spec",
    "list_models",
]
