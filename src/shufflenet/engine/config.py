"""The training recipe: one typed schema of nested dataclasses, loaded from YAML and validated.

A YAML file may name ``_base_: other.yaml`` (relative to itself); its keys are merged over the
base. Any key can be overridden with ``--set section.key=value`` (the value is parsed as YAML).
An unknown key or a value of the wrong type fails at once with the list of valid keys.
"""

from __future__ import annotations

import dataclasses
import math
import operator
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ..errors import UserError


@dataclass
class ModelConfig:
    name: str = "shufflenet_v2_x1_0"
    num_classes: int = 1000
    small_input: bool = False  # stem without down-sampling, for 32 px images
    pretrained: str | None = None  # checkpoint path or tag; the classifier is re-initialised if the class count differs
    kwargs: dict = field(default_factory=dict)  # other architecture options: layout, dropout, norm_eval...


@dataclass
class AugmentConfig:
    """Per-image training augmentation (on uint8 tensors) and per-batch mixing."""

    crop: Literal["random_resized", "pad"] = "random_resized"
    crop_size: int = 224
    scale: tuple[float, float] = (0.08, 1.0)  # random_resized: area fraction
    padding: int = 4  # pad: pixels of zero padding before the random crop
    hflip: float = 0.5
    color_jitter: float = 0.0  # brightness = contrast = saturation strength
    auto_augment: Literal["trivial_augment_wide"] | None = None
    random_erasing: float = 0.0
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    repeats: int = 1  # repeated augmentation (torchvision's --ra-sampler --ra-reps): each drawn image this many times per step
    on_device: bool = False  # pad-crop, flip and TrivialAugmentWide on the batch, on the training device (data/batch_augment.py)


@dataclass
class EvalConfig:
    """Evaluation preprocessing; saved with the weights as their ``Preprocessing``."""

    resize_size: int = 256
    crop_size: int = 224
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    channel_order: Literal["RGB", "BGR"] = "RGB"
    interpolation: Literal["bilinear", "bicubic", "nearest"] = "bilinear"


@dataclass
class DataConfig:
    root: str | None = None  # a folder holding train/ and val/
    train: str | None = None  # image folder or list file; default ROOT/train
    val: str | None = None  # default ROOT/val
    train_per_class: int | None = None  # keep the first N training images of each class (quick experiments, few-shot)
    num_workers: int = 2
    cache_decoded: bool = False  # decode every image once into memory (small images such as CIFAR)
    strict: bool = False  # an unreadable image is an error instead of a counted warning
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


@dataclass
class OptimConfig:
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.1
    base_batch_size: int | None = None  # lr is for this global batch and scales linearly; None: as given
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 4e-5
    no_decay_1d: bool = True  # no weight decay on BN weights, biases and every other 1-D parameter
    clip_grad_norm: float | None = None


@dataclass
class ScheduleConfig:
    epochs: int = 100
    warmup_epochs: float = 0.0
    warmup_start_factor: float = 0.01
    decay: Literal["cosine", "linear", "constant"] = "cosine"
    final_lr_factor: float = 0.0  # lr at the end, as a fraction of the peak


@dataclass
class TrainConfig:
    batch_size: int = 64  # per process
    grad_accum_steps: int = 1
    label_smoothing: float = 0.0
    amp: Literal["none", "bf16", "fp16"] = "none"
    channels_last: bool = False
    even_odd_routing: bool = False  # V2 (torchvision layout) trains in its exact even/odd twin: no shuffle copies
    compile: bool = False
    sync_bn: bool = False
    qat: bool = False  # quantization-aware fine-tuning of model.pretrained (deploy/qat.py); writes model.int8.onnx
    ema_decay: float | None = None  # e.g. 0.9998 per optimizer step; None: no EMA
    ema_warmup: bool = True  # decay min(ema_decay, (1+n)/(10+n)) at update n, so short runs get a usable average
    bn_recalibration_batches: int = 0  # Megvii: a final pass re-estimating BN statistics
    seed: int = 0
    device: str = "auto"  # auto, cpu, cuda, cuda:1...
    checkpoint_every_steps: int = 0  # 0: only at the end of every epoch
    log_every_steps: int = 20
    eval_every_epochs: int = 1


@dataclass
class DistillConfig:
    """Knowledge distillation from trained teachers (engine/distill.py); no teachers: off."""

    teachers: list[str] = field(default_factory=list)  # names, name.tag or checkpoint paths; several: their average
    alpha: float = 0.9  # the teachers' share of the loss; the labels keep 1 - alpha
    temperature: float = 4.0  # softens both sides' predictions; the teachers' loss is scaled by its square


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# the range of each number: outside it the loop divides by zero, loads nothing or never logs, or
# torch and torchvision refuse the value with a traceback
AT_LEAST, GREATER_THAN, AT_MOST = "at least", "greater than", "at most"
_COMPARE = {AT_LEAST: operator.ge, GREATER_THAN: operator.gt, AT_MOST: operator.le}
PROBABILITY = {AT_LEAST: 0, AT_MOST: 1}
BOUNDS = {
    "model.num_classes": {AT_LEAST: 1},
    "data.train_per_class": {AT_LEAST: 1},
    "data.num_workers": {AT_LEAST: 0},
    "data.augment.crop_size": {AT_LEAST: 1},
    "data.augment.padding": {AT_LEAST: 0},
    "data.augment.hflip": PROBABILITY,
    "data.augment.random_erasing": PROBABILITY,
    "data.augment.mixup_alpha": {AT_LEAST: 0},
    "data.augment.cutmix_alpha": {AT_LEAST: 0},
    "data.augment.repeats": {AT_LEAST: 1},
    "data.eval.resize_size": {AT_LEAST: 1},
    "data.eval.crop_size": {AT_LEAST: 1},
    "optim.lr": {GREATER_THAN: 0},
    "optim.base_batch_size": {AT_LEAST: 1},
    "optim.momentum": {AT_LEAST: 0},
    "optim.weight_decay": {AT_LEAST: 0},
    "schedule.epochs": {AT_LEAST: 1},
    "schedule.warmup_epochs": {AT_LEAST: 0},
    "train.batch_size": {AT_LEAST: 1},
    "train.grad_accum_steps": {AT_LEAST: 1},
    "train.label_smoothing": PROBABILITY,
    "train.ema_decay": {GREATER_THAN: 0, AT_MOST: 1},
    "train.bn_recalibration_batches": {AT_LEAST: 0},
    "train.checkpoint_every_steps": {AT_LEAST: 0},
    "train.log_every_steps": {AT_LEAST: 1},
    "train.eval_every_epochs": {AT_LEAST: 1},
    "distill.alpha": PROBABILITY,
    "distill.temperature": {GREATER_THAN: 0},
}


# -- loading -----------------------------------------------------------------------------------
class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-4`` (no dot) as a string; a recipe means the number."""


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9]+[eE][-+]?[0-9]+$"), list("-+0123456789"))


def _parse_yaml(text: str, source: str) -> Any:
    """``text`` parsed, or a one-line UserError naming ``source`` (yaml's own message spans lines)."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise UserError(f"{source} is not valid YAML{where}: {problem}") from None


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """Read ``path`` (with its ``_base_`` chain), apply ``key=value`` overrides, validate."""
    raw = _read_yaml(Path(path)) if path else {}
    for item in overrides:
        _apply_override(raw, item)
    return from_dict(raw)


def from_dict(raw: dict) -> Config:
    config = _build(Config, raw, "")
    _check_combinations(config)
    return config


def _check_combinations(config: Config) -> None:
    """Values valid one by one that do not go together (each check names what torch would refuse later)."""
    optim = config.optim
    if optim.name == "sgd" and optim.nesterov and optim.momentum == 0:  # torch.optim.SGD would raise
        raise UserError("config key optim.nesterov: true needs optim.momentum greater than 0")
    low, high = config.data.augment.scale
    if not 0 < low <= high <= 1:
        raise UserError(f"config key data.augment.scale: needs 0 < min <= max <= 1, got {[low, high]}")
    train = config.train
    kwargs = config.model.kwargs
    clashes = {"model.pretrained unset": not config.model.pretrained, "train.even_odd_routing": train.even_odd_routing,
               "model.kwargs.routing=even_odd": kwargs.get("routing") == "even_odd",
               "model.kwargs.frozen_stages": kwargs.get("frozen_stages", -1) >= 0,
               f"train.amp={train.amp}": train.amp != "none", "train.bn_recalibration_batches": train.bn_recalibration_batches > 0}
    if train.qat and any(clashes.values()):  # QAT fine-tunes trained weights with BN folded, in float32
        raise UserError(f"train.qat does not go with {', '.join(k for k, v in clashes.items() if v)}")


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    if path.resolve() in seen:
        raise UserError(f"config {path}: _base_ chain loops back to itself")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"config file not found: {path}") from None
    except UnicodeDecodeError:
        raise UserError(f"config {path}: not a YAML file (not UTF-8 text)") from None
    except OSError as error:  # a directory, no permission...
        raise UserError(f"config {path}: cannot read it: {error.strerror}") from None
    raw = _parse_yaml(text, f"config {path}") or {}
    if not isinstance(raw, dict):
        raise UserError(f"config {path}: expected a mapping of sections, got {type(raw).__name__}")
    base = raw.pop("_base_", None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise UserError(f"config {path}: _base_ must be the path of one YAML file (relative to this one), got {base!r}")
    return _merge(_read_yaml(path.parent / base, (*seen, path.resolve())), raw)


def _merge(base: dict, top: dict) -> dict:
    merged = dict(base)
    for key, value in top.items():
        both_dicts = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = _merge(merged[key], value) if both_dicts and key != "kwargs" else value
    return merged


def _apply_override(raw: dict, item: str) -> None:
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise UserError(f"--set expects KEY=VALUE (e.g. optim.lr=0.1), got {item!r}")
    *parents, leaf = key.strip().split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UserError(f"--set {key}: {part!r} is not a section")
    node[leaf] = _parse_yaml(text, f"--set {key.strip()}: the value {text!r}") if text.strip() else None


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise UserError(f"config section {prefix.rstrip('.') or '(top)'} must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in raw if k not in names]
    if unknown:
        section = prefix.rstrip(".") or "the top level"
        raise UserError(f"unknown config key {prefix + str(unknown[0])!r}; valid keys in {section}: {', '.join(names)}")
    values = {}
    for key, value in raw.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            values[key] = _build(hint, value, f"{prefix}{key}.")
        else:
            values[key] = _check_bounds(_check(value, hint, f"{prefix}{key}"), f"{prefix}{key}")
    return cls(**values)


def _check(value: Any, hint: Any, key: str) -> Any:
    """``value`` converted to ``hint`` (int -> float, list -> tuple) or a UserError."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        for option in options:
            try:
                return _check(value, option, key)
            except UserError:
                continue
        raise UserError(f"config key {key}: expected {_describe(hint)}, got {value!r}")
    if origin is Literal:
        if value in args:
            return value
        raise UserError(f"config key {key}: expected one of {', '.join(map(repr, args))}, got {value!r}")
    if origin is list:
        if isinstance(value, list):
            return [_check(v, args[0], key) for v in value]
        raise UserError(f"config key {key}: expected a list, got {value!r}")
    if origin is tuple:
        if isinstance(value, (list, tuple)) and len(value) == len(args):
            return tuple(_check(v, a, key) for v, a in zip(value, args))
        raise UserError(f"config key {key}: expected a list of {len(args)} numbers, got {value!r}")
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint in (int, str, bool, dict) and isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
        return value
    raise UserError(f"config key {key}: expected {_describe(hint)}, got {value!r}")


def _check_bounds(value: Any, key: str) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"config key {key}: must be a finite number, got {value!r}")
    for words, bound in BOUNDS.get(key, {}).items():
        if value is not None and not _COMPARE[words](value, bound):
            raise UserError(f"config key {key}: must be {words} {bound}, got {value!r}")
    return value


def _describe(hint: Any) -> str:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if args and typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args) + " or null"
    return getattr(hint, "__name__", str(hint))


def save_config(config: Config, path: Path) -> None:
    data = config.to_dict()
    path.write_text(yaml.safe_dump(_plain(data), sort_keys=False))


def _plain(value: Any) -> Any:
    """Tuples as lists so that safe_dump writes plain YAML."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
