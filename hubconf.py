"""torch.hub entry points, one per model of the zoo (``torch.hub.list`` shows them):

    model = torch.hub.load("path/to/this/repo", "shufflenet_v2_x1_0", source="local", pretrained=True)
    model = torch.hub.load("OWNER/REPO", "shufflenet_v2_x1_0", pretrained="cifar10")   # from GitHub

``pretrained`` and the keyword arguments are ``shufflenet.get_model``'s: ``True`` for the model's
default tag, a tag (``"tv_in1k"``, ``"cifar10"``), or a checkpoint file in any supported format;
``num_classes``, ``small_input``, ``out_indices``, ``frozen_stages``, ...
"""

# torch.hub takes every public callable of this module for an entry point, hence the underscores
import sys as _sys
from pathlib import Path as _Path

# what the package imports (torch.hub checks that each is installed before loading)
dependencies = ["torch", "torchvision", "numpy", "PIL", "yaml", "safetensors", "tqdm", "onnx"]

_sys.path.insert(0, str(_Path(__file__).resolve().parent / "src"))  # the package as this checkout has it
from shufflenet.models import get_model as _get_model  # noqa: E402
from shufflenet.models import list_models as _list_models  # noqa: E402


def _entry_point(name: str):
    def build(pretrained=False, **kwargs):
        return _get_model(name, pretrained=pretrained, **kwargs)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"{name}: shufflenet.get_model({name!r}, pretrained=pretrained, **kwargs)."
    return build


globals().update({name: _entry_point(name) for name in _list_models()})
