"""Our checkpoint format (safetensors + metadata) and loading any supported checkpoint into a model.

Our file is a safetensors state dict whose metadata (all strings) carries what is needed to use
the weights without any other file: ``shufflenet.format`` (version), ``architecture`` (registry
name), ``model_kwargs`` (JSON: the variant, e.g. ``{"layout": "megvii"}``), ``num_classes``,
``class_names`` (JSON list), ``preprocessing`` (JSON ``Preprocessing``) and ``source`` (JSON:
where the weights came from). Extra metadata passed to ``save_checkpoint`` is stored beside them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.preprocess import IMAGENET, Preprocessing
from ..files import atomic_destination
from ..models import layers
from ..models.registry import ModelSpec, get_spec, list_models
from .categories import dataset_classes, imagenet_categories
from .formats import FORMATS, V1, V2, CheckpointError, RawCheckpoint, detect_format, family_of, read_file

FORMAT_VERSION = "1"
RESERVED = ("shufflenet.format", "architecture", "model_kwargs", "num_classes", "class_names", "preprocessing", "source")


# -- strict loading with clear errors --------------------------------------------------------------
def state_problems(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> dict[str, list[str]]:
    """Missing keys, unexpected keys and shape mismatches; empty when ``state`` fits exactly.

    ``num_batches_tracked`` is optional: Megvii, mindcv and MegEngine files do not have it.
    """
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in state.items()
        if k in expected and tuple(v.shape) != tuple(expected[k].shape)
    ]
    found = {"missing keys": missing, "unexpected keys": unexpected, "mismatched shapes": mismatched}
    return {label: items for label, items in found.items() if items}


def describe(problems: dict[str, list[str]]) -> str:
    return "; ".join(
        f"{label} ({len(items)}): {', '.join(items[:4])}{', ...' if len(items) > 4 else ''}"
        for label, items in problems.items()
    )


def load_state(model: nn.Module, state: dict[str, torch.Tensor], origin: str) -> None:
    problems = state_problems(model.state_dict(), state)
    if problems:
        raise CheckpointError(f"{origin} does not fit {model_label(model)}: {describe(problems)}")
    broken = non_finite(state)
    if broken:  # a diverged run's save: it would load and predict garbage without a word
        raise CheckpointError(f"{origin} is damaged: {describe({'tensors with NaN or inf': broken})}")
    model.load_state_dict(state, strict=False)


def non_finite(state: dict[str, torch.Tensor]) -> list[str]:
    """The keys of the floating-point tensors holding NaN or inf."""
    return [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]


def model_label(model: nn.Module) -> str:
    return getattr(model, "model_name", None) or type(model).__name__


# -- choosing the architecture from the weights ----------------------------------------------------
def _meta_state(spec: ModelSpec, kwargs: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The state dict's shapes only: built on the meta device, without the (slow there) init."""
    shapes_only = type("ShapesOnly", (spec.builder,), {"init_weights": lambda self: None})
    with torch.device("meta"):
        return shapes_only(**{**spec.kwargs, **kwargs}).state_dict()


def match_architecture(
    state: dict[str, torch.Tensor], variant_kwargs: dict[str, dict], spec: ModelSpec | None, origin: str
) -> tuple[ModelSpec, dict[str, Any]]:
    """The registered model (``spec`` if given) whose state dict has exactly these keys and shapes."""
    family = family_of(state)
    kwargs = dict(variant_kwargs.get(family, {}))
    if "head.fc.weight" in state:
        kwargs["num_classes"] = state["head.fc.weight"].shape[0]
    candidates = [spec] if spec else [get_spec(n) for n in list_models() if get_spec(n).family == family]
    best: tuple[int, str, dict[str, list[str]]] | None = None
    for candidate in candidates:
        try:
            expected = _meta_state(candidate, kwargs)
        except ValueError:  # the variant does not exist at this size (Megvii's V2 layout at 0.25x)
            continue
        problems = state_problems(expected, state)
        if not problems:
            return candidate, kwargs
        count = sum(map(len, problems.values()))
        if best is None or count < best[0]:
            best = (count, candidate.name, problems)
    custom = _custom_v2(state, kwargs) if family == V2 and spec is None else None  # a named model fixes its widths
    if custom:
        return custom
    assert best is not None
    target = f"{best[1]}" if spec else f"any {family} model (closest: {best[1]})"
    raise CheckpointError(f"{origin} does not fit {target}: {describe(best[2])}")


def v2_stage_plan(state: dict[str, torch.Tensor]) -> dict[str, list[int]] | None:
    """V2 weights' stage widths and repeats, read off their shapes (torchvision's
    ``stages_out_channels``/``stages_repeats``); None if the keys are not a V2's."""
    units = {tuple(int(i) for i in key.split(".")[1:3]) for key in state if key.startswith("stages.")}
    if not units:
        return None
    repeats = [sum(1 for stage, _ in units if stage == s) for s in range(max(units)[0] + 1)]
    try:
        widths = [state[f"stages.{s}.0.branch_proj.1.conv.weight"].shape[0] + state[f"stages.{s}.0.branch_main.2.conv.weight"].shape[0]
                  for s in range(len(repeats))]
        stem, last = state["stem.conv.weight"].shape[0], state["conv_last.conv.weight"].shape[0]
    except KeyError:
        return None
    return {"stage_widths": [stem, *widths, last], "stage_repeats": repeats}


def _custom_v2(state: dict[str, torch.Tensor], kwargs: dict[str, Any]) -> tuple[ModelSpec, dict[str, Any]] | None:
    """V2 weights of widths or depths no registered model has, built with their own stage plan."""
    plan = v2_stage_plan(state)
    candidate = get_spec("shufflenet_v2_x1_0")  # the registry name of every custom V2
    if plan is None:
        return None
    try:
        expected = _meta_state(candidate, {**kwargs, **plan})
    except ValueError:
        return None
    return None if state_problems(expected, state) else (candidate, {**kwargs, **plan})


def move_shuffle_before_depthwise(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rewrite V1 weights whose units shuffle *after* the depthwise conv for our shuffle-first units.

    Depthwise conv and BN act per channel, so ``shuffle(dw(x)) == dw'(shuffle(x))`` where the
    parameters of ``dw'`` for output channel ``j`` are those of source channel ``p(j)`` and
    ``shuffle(x)[j] = x[p(j)]``. ``p`` is read off our own ``channel_shuffle`` applied to an index
    ramp, with the unit's group count (canonical or Megvii's inverse, whichever the model uses).
    """
    state = dict(state)
    for name, unit in model.named_modules():
        if getattr(unit, "shuffle_groups", 1) <= 1 or not hasattr(unit, "depthwise"):
            continue
        mid = unit.depthwise.conv.out_channels
        perm = layers.shuffle_order(mid, unit.shuffle_groups)
        for key in ("conv.weight", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"):
            full = f"{name}.depthwise.{key}"
            state[full] = state[full][perm]
    return state


# -- loading any checkpoint ------------------------------------------------------------------------
def load_checkpoint(
    path: str | Path, source_format: str = "auto", spec: ModelSpec | None = None, **model_kwargs: Any
) -> nn.Module:
    """Build the model a checkpoint file holds and load it (eval mode, metadata set). A zoo's file
    under its published name (as torch.hub and our cache keep it) loads as that pretrained tag: with
    the architecture options, preprocessing and classes the tag records and the file cannot say."""
    raw = read_file(path)
    progress = None
    if raw.training_state is not None:
        from ..engine.checkpoint import model_from_training_state  # the engine builds what its recipes describe

        model = model_from_training_state(raw.training_state, Path(path))
        if hasattr(model, "qat_weight_levels"):  # BN folded into its convs: as trained, or nothing
            return model
        tensors, metadata = _contents(model)  # as the run's model.safetensors holds it (EMA weights if any)
        raw, progress = RawCheckpoint(tensors, "torch", metadata), model.training_progress
    if raw.metadata.get("shufflenet.format") and source_format not in ("auto", "ours"):  # a foreign reading would drop its metadata
        raise CheckpointError(f"{path} is a shufflenet checkpoint, not a {source_format} one; leave out --from")
    fmt = detect_format(raw) if source_format == "auto" else source_format
    if fmt == "ours" or (fmt == "state_dict" and raw.metadata):
        model = _load_ours(raw, path, spec, model_kwargs)
    else:
        model = _load_foreign(raw, fmt, path, spec, model_kwargs)
    if progress:
        model.training_progress = progress
    return model.eval()


def _load_foreign(raw: RawCheckpoint, fmt: str, path: str | Path, spec: ModelSpec | None, model_kwargs: dict) -> nn.Module:
    origin = f"{fmt} checkpoint {path}"
    if fmt == "state_dict":  # our key names in a plain torch file (e.g. a training checkpoint's model)
        state, source = raw.tensors, None
    elif fmt in FORMATS:
        source = FORMATS[fmt]
        state = source.to_ours(raw.tensors)
    else:
        raise CheckpointError(f"unknown checkpoint format {fmt!r}; choose from auto, {', '.join(FORMATS)}")
    if spec is None and fmt == "paddleclas" and "swish" in Path(path).name.lower():
        spec = get_spec("shufflenet_v2_x1_0_swish")  # x1.0's shapes: only PaddleClas's file name tells them apart
    published = _published_tag(path, fmt, spec)
    if published:  # e.g. chenyaofo's CIFAR file: torchvision's keys and shapes, but a stride-1 stem
        spec, model_kwargs = get_spec(published.model), {**published.model_kwargs, **model_kwargs}
    variants = source.variant_kwargs if source else {}
    matched, kwargs = match_architecture(state, variants, spec, origin)
    model = matched.build(**{**kwargs, **model_kwargs})
    if source and source.shuffle_after_depthwise and family_of(state) == V1:
        state = move_shuffle_before_depthwise(model, state)
    load_state(model, state, origin)
    model.source = {"format": fmt, "file": Path(path).name}
    if published:
        model.preprocessing, model.class_names = published.preprocessing, dataset_classes(published.dataset)
        model.source.update(tag=published.full_name, url=published.url)
    else:
        model.preprocessing = source.preprocessing_for(matched.name) if source else matched.preprocessing
        model.class_names = imagenet_categories() if kwargs.get("num_classes") == 1000 else None
    return model


def _published_tag(path: str | Path, fmt: str, spec: ModelSpec | None):
    """The download tag whose file ``path`` is, by its name, when its format and model agree."""
    from .hub import published_file_tag  # the tags are built on this module

    tag = published_file_tag(path)
    return tag if tag and tag.source_format == fmt and (spec is None or spec.name == tag.model) else None


def _load_ours(raw: RawCheckpoint, path: str | Path, spec: ModelSpec | None, model_kwargs: dict) -> nn.Module:
    meta = raw.metadata
    try:
        name = meta["architecture"]
        kwargs = json.loads(meta.get("model_kwargs", "{}"))
        preprocessing = Preprocessing.from_dict(json.loads(meta["preprocessing"])) if "preprocessing" in meta else IMAGENET
        class_names = json.loads(meta["class_names"]) if "class_names" in meta else None
        source = json.loads(meta.get("source", "null"))
    except (KeyError, ValueError, TypeError) as error:
        raise CheckpointError(f"{path}: malformed shufflenet metadata ({error})") from None
    stored = get_spec(name)
    if spec is not None and spec.name != stored.name:
        raise CheckpointError(f"{path} holds {stored.name} weights, not {spec.name}")
    model = stored.build(**{**kwargs, **model_kwargs})
    load_state(model, raw.tensors, f"checkpoint {path}")
    model.preprocessing = preprocessing
    model.class_names = tuple(class_names) if class_names else None
    model.source = source
    return model


# -- saving ----------------------------------------------------------------------------------------
def variant_kwargs(model: nn.Module) -> dict[str, Any]:
    """The constructor options that change a model's weights or forward, read off the model."""
    kwargs: dict[str, Any] = {"num_classes": model.head.fc.out_features}
    if model.stem.conv.stride == (1, 1):
        kwargs["small_input"] = True
    if hasattr(model, "layout"):
        kwargs["layout"] = model.layout
    if getattr(model, "routing", None) == "even_odd" and model.layout == "torchvision":
        kwargs["routing"] = model.routing
    if getattr(model, "activation", "relu") != "relu":  # V2 with swish
        kwargs["activation"] = model.activation
    for key in ("stage_widths", "stage_repeats"):  # V2 built with its own widths or depths
        if getattr(model, key, None):
            kwargs[key] = list(getattr(model, key))
    if hasattr(model, "shuffle"):  # V1
        kwargs["fc_bias"] = model.head.fc.bias is not None
        kwargs["shuffle"] = model.shuffle
    return kwargs


def _contents(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata our file holds for ``model``."""
    name = getattr(model, "model_name", None)
    if not name:
        raise CheckpointError("the model has no model_name; build it with shufflenet.get_model")
    if hasattr(model, "qat_weight_levels"):
        raise CheckpointError("a quantization-aware model has BN folded into its convs: save it as INT8 ONNX with `shufflenet export`")
    spec = get_spec(name)
    kwargs = variant_kwargs(model)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    problems = state_problems(_meta_state(spec, kwargs), state)
    if problems:
        raise CheckpointError(f"the model's weights do not fit {spec.name} {kwargs}: {describe(problems)}")
    class_names = getattr(model, "class_names", None)
    metadata = {
        "shufflenet.format": FORMAT_VERSION,
        "architecture": spec.name,
        "model_kwargs": json.dumps(kwargs),
        "num_classes": str(kwargs["num_classes"]),
        "preprocessing": json.dumps(getattr(model, "preprocessing", spec.preprocessing).to_dict()),
        "source": json.dumps(getattr(model, "source", None)),
        **({"class_names": json.dumps(list(class_names))} if class_names else {}),
    }
    return state, metadata


def save_checkpoint(model: nn.Module, path: str | Path, extra_metadata: dict[str, Any] | None = None) -> Path:
    """Write ``model`` in our safetensors format (atomically: a failed write leaves no file)."""
    from safetensors.torch import save_file

    state, metadata = _contents(model)
    for key, value in (extra_metadata or {}).items():
        if key in RESERVED:
            raise ValueError(f"extra_metadata may not override {key!r}")
        metadata[key] = value if isinstance(value, str) else json.dumps(value)
    path = Path(path)
    with atomic_destination(path) as partial:
        save_file(state, partial, metadata=metadata)
    return path
