"""The model zoo: every architecture by name, with the numbers the papers and zoos published.

Metadata lives beside the models, not inside them (as in timm): ``ModelSpec`` says how to build a
model and what it should measure; weights (``name.tag``) are described in ``shufflenet.weights``.
"""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..data.preprocess import IMAGENET, Preprocessing
from ..errors import UnknownModelError
from .v1 import ShuffleNetV1
from .v2 import ShuffleNetV2
from .v2_plus import ShuffleNetV2Plus


@dataclass(frozen=True)
class Reference:
    """Numbers one source published for one model (ImageNet-1k, 224 px; MACs = multiply-adds)."""

    source: str
    params: int | None = None
    macs: int | None = None
    top1: float | None = None
    top5: float | None = None


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str
    builder: type[nn.Module]
    kwargs: dict[str, Any]
    references: tuple[Reference, ...] = ()
    preprocessing: Preprocessing = IMAGENET

    def build(self, **overrides: Any) -> nn.Module:
        model = self.builder(**{**self.kwargs, **overrides})
        model.model_name = self.name
        model.preprocessing = self.preprocessing
        return model

    def published_by(self, source: str) -> Reference:
        """The figures ``source`` published for this model (the accuracy a download tag states)."""
        return next(r for r in self.references if r.source == source)

    def reference(self, quantity: str) -> tuple[int, str] | None:
        """(value, source) of the first source that published ``quantity`` ("params" or "macs")."""
        return next(((getattr(r, quantity), r.source) for r in self.references if getattr(r, quantity)), None)


_REGISTRY: dict[str, ModelSpec] = {}
_ALIASES: dict[str, str] = {}  # alias -> "name" or "name.tag"

M, K = 1_000_000, 1_000


def register(spec: ModelSpec, aliases: dict[str, str] | None = None) -> None:
    _REGISTRY[spec.name] = spec
    _ALIASES.update(aliases or {})


def _width_suffix(width: float) -> str:
    digits = f"{width:.2f}".rstrip("0")  # 0.25 -> x0_25, 1.0 -> x1_0
    return "x" + (digits + "0" if digits.endswith(".") else digits).replace(".", "_")


# -- ShuffleNet V1 ---------------------------------------------------------------------------
# Paper (arXiv:1707.01083) Tables 1-2: MFLOPs (= MACs) and top-1 error per width and group count.
_V1_PAPER = {
    1.0: {1: (143, 33.6), 2: (140, 32.7), 3: (137, 32.6), 4: (133, 32.8), 8: (137, 32.4)},
    0.5: {1: (38, 45.1), 2: (38, 44.4), 3: (38, 43.2), 4: (38, 41.6), 8: (38, 42.3)},
    0.25: {1: (13, 57.1), 2: (13, 56.8), 3: (13, 55.0), 4: (13, 54.2), 8: (13, 52.7)},
}
# Megvii's official README: (MACs in M, params in M, top-1, top-5).
_V1_MEGVII = {
    (3, 0.5): (38, 0.7, 57.3, 80.0), (3, 1.0): (138, 1.9, 67.8, 87.7),
    (3, 1.5): (292, 3.4, 71.6, 90.2), (3, 2.0): (524, 5.4, 74.1, 91.4),
    (8, 0.5): (40, 1.0, 58.8, 81.0), (8, 1.0): (138, 2.4, 68.0, 86.4),
    (8, 1.5): (290, 4.3, 71.0, 89.6), (8, 2.0): (522, 6.5, 72.9, 90.8),
}
_V1_OTHERS = {
    (3, 1.0): (
        Reference("mmpretrain", params=1_870 * K, macs=146 * M, top1=68.13, top5=87.81),
        Reference("mindcv", top1=67.77, top5=87.73),
    ),
    (3, 0.5): (Reference("mindcv", top1=57.05, top5=79.73),),
}


def _v1_references(groups: int, width: float) -> tuple[Reference, ...]:
    refs = []
    if (groups, width) in _V1_MEGVII:
        macs, params, top1, top5 = _V1_MEGVII[groups, width]
        refs.append(Reference("megvii", params=round(params * M), macs=macs * M, top1=top1, top5=top5))
    if width in _V1_PAPER:
        macs, err = _V1_PAPER[width][groups]
        refs.insert(0, Reference("paper", macs=macs * M, top1=round(100 - err, 1)))
    return tuple(refs) + _V1_OTHERS.get((groups, width), ())


for _g in (1, 2, 3, 4, 8):
    for _w in (0.25, 0.5, 1.0, 1.5, 2.0):
        _name = f"shufflenet_v1_g{_g}_{_width_suffix(_w)}"
        _aliases = {}
        if _g in (3, 8) and _w >= 0.5:  # mindcv: shufflenet_v1_g3_05 ... shufflenet_v1_g8_20
            _tag = ".mindcv_in1k" if _g == 3 and _w in (0.5, 1.0) else ""  # mindcv published these two
            _aliases[f"shufflenet_v1_g{_g}_{_width_suffix(_w)[1:].replace('_', '')}"] = _name + _tag
        register(
            ModelSpec(_name, "ShuffleNet V1", ShuffleNetV1, {"groups": _g, "width": _w}, _v1_references(_g, _w)),
            _aliases,
        )
_ALIASES["shufflenet-v1-1x_16xb64_in1k"] = "shufflenet_v1_g3_x1_0.mmpretrain_in1k"

# -- ShuffleNet V2 ---------------------------------------------------------------------------
# (torchvision params, MACs, top-1, top-5), paper Table 8 (MACs, top-1 error), Megvii README.
_V2 = {
    0.5: ((1_366_792, 40_481 * K, 60.552, 81.746), (41, 39.7), (41, 1.4, 61.1, 82.6), (60.53, 82.11)),
    1.0: ((2_278_604, 144_909 * K, 69.362, 88.316), (146, 30.6), (146, 2.3, 69.4, 88.9), (69.47, 88.88)),
    1.5: ((3_503_624, 295_757 * K, 72.996, 91.086), (299, 27.4), (299, 3.5, 72.6, 90.6), (72.79, 90.93)),
    2.0: ((7_393_996, 583_253 * K, 76.230, 93.006), (591, 25.1), (591, 7.4, 75.0, 92.4), (75.07, 92.08)),
}
# PaddleClas's zoo table (docs/en/ImageNet_models_en.md): top-1, top-5 of its .pdparams weights. Its
# params column is given to 0.01 M, and is kept where no other source counts them (0.25x, 0.33x); its
# "FLOPs" column (0.03 / 0.04 G there) counts about two per multiply-add at one significant digit.
_PADDLECLAS_V2 = {0.25: (49.90, 73.79), 0.33: (53.73, 77.05), 0.5: (60.32, 82.26), 1.0: (68.80, 88.45),
                  1.5: (71.63, 90.15), 2.0: (73.15, 91.20)}
for _w, (_tv, (_pm, _perr), _mg, _mc) in _V2.items():
    _refs = (
        Reference("torchvision", *_tv),
        Reference("paper", macs=_pm * M, top1=round(100 - _perr, 1)),
        Reference("megvii", params=round(_mg[1] * M), macs=_mg[0] * M, top1=_mg[2], top5=_mg[3]),
        Reference("mindcv", top1=_mc[0], top5=_mc[1]),
        Reference("paddleclas", top1=_PADDLECLAS_V2[_w][0], top5=_PADDLECLAS_V2[_w][1]),
    )
    if _w == 1.0:
        _refs += (Reference("mmpretrain", params=2_280 * K, macs=149 * M, top1=69.55, top5=88.92),)
    register(ModelSpec(f"shufflenet_v2_{_width_suffix(_w)}", "ShuffleNet V2", ShuffleNetV2, {"width": _w}, _refs))
_ALIASES["shufflenet-v2-1x_16xb64_in1k"] = "shufflenet_v2_x1_0.mmpretrain_in1k"
for _w, _params in {0.25: 0.60, 0.33: 0.64}.items():
    _refs = (Reference("paddleclas", params=round(_params * M), top1=_PADDLECLAS_V2[_w][0], top5=_PADDLECLAS_V2[_w][1]),)
    register(ModelSpec(f"shufflenet_v2_{_width_suffix(_w)}", "ShuffleNet V2", ShuffleNetV2, {"width": _w}, _refs))

# PaddleClas's ShuffleNetV2_swish: x1.0 with swish (SiLU) after each conv but the depthwise ones. Its
# weights have x1.0's shapes, so it has a family of its own: a file is never taken for it by its keys,
# only by this name (tag, ``convert --model``). Its table's "FLOPs" (148.86 M, as for the ReLU x1.0)
# come from paddle.flops, which also counts BN and activations, so only its params are kept.
register(ModelSpec("shufflenet_v2_x1_0_swish", "ShuffleNet V2 (swish)", ShuffleNetV2, {"width": 1.0, "activation": "silu"},
                   (Reference("paddleclas", params=2_290 * K, top1=70.03, top5=89.17),)))

# -- ShuffleNet V2+ (Megvii's searched model; README: MACs, params, top-1 / top-5 error) -----------
for _size, (_macs, _params, _e1, _e5) in {
    "small": (156, 5.1, 25.9, 8.3),
    "medium": (222, 5.6, 24.3, 7.4),
    "large": (360, 6.7, 22.9, 6.7),
}.items():
    _ref = Reference("megvii", params=round(_params * M), macs=_macs * M, top1=round(100 - _e1, 1), top5=round(100 - _e5, 1))
    register(ModelSpec(f"shufflenet_v2_plus_{_size}", "ShuffleNet V2+", ShuffleNetV2Plus, {"size": _size}, (_ref,)))


# -- look-up ---------------------------------------------------------------------------------------
def list_models(pattern: str | None = None) -> list[str]:
    """Canonical model names, optionally filtered by a shell-style pattern (``*v2*``)."""
    names = sorted(_REGISTRY, key=_natural_key)
    return [n for n in names if pattern is None or fnmatch.fnmatchcase(n, pattern)]


def _natural_key(name: str) -> tuple:
    spec = _REGISTRY[name]
    return (spec.family, tuple(sorted(spec.kwargs.items(), key=str)), name)


def split_name(name: str) -> tuple[ModelSpec, str | None]:
    """Resolve ``name``, ``name.tag`` or an alias from another zoo to (spec, tag)."""
    full = _ALIASES.get(name, name)
    base, _, tag = full.partition(".")
    base = _ALIASES.get(base, base)
    if base not in _REGISTRY:
        close = difflib.get_close_matches(base, [*_REGISTRY, *_ALIASES], n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UnknownModelError(f"unknown model {name!r}{hint} (`shufflenet list` shows all names)")
    return _REGISTRY[base], tag or None


def is_model_name(name: str) -> bool:
    """``name``, ``name.tag`` or an alias that resolves to a registered model."""
    try:
        split_name(name)
    except UnknownModelError:
        return False
    return True


def get_spec(name: str) -> ModelSpec:
    return split_name(name)[0]


def get_model(name: str, pretrained: bool | str = False, num_classes: int | None = None, **kwargs: Any) -> nn.Module:
    """Build a model by name (``name``, ``name.tag`` or an alias from another zoo).

    Args:
        pretrained: ``False``; ``True`` for the weights of ``.tag`` (or the model's default tag);
            a tag; or a checkpoint path in any supported format.
        num_classes: classifier outputs; with pretrained weights of another class count the
            backbone is kept and the classifier re-initialised.
        kwargs: architecture options (``small_input``, ``out_indices``, ``frozen_stages``, ...).
    """
    spec, tag = split_name(name)
    if pretrained is False or pretrained is None:
        if tag:  # the tag fixes the architecture variant its weights need, as if they were loaded
            from ..weights.hub import get_tag, tag_model_kwargs

            kwargs = {**tag_model_kwargs(spec.name, tag), **kwargs}
        if num_classes is not None:
            kwargs["num_classes"] = num_classes
        model = spec.build(**kwargs)
        if tag:  # and the input they expect (32 px for CIFAR-10): `export` and `bench` size their input by it
            model.preprocessing = get_tag(spec.name, tag).preprocessing
        return model
    from ..weights.hub import build_pretrained

    return build_pretrained(spec, tag, pretrained, num_classes, **kwargs)
