"""From a ``Config`` to the objects the training loop uses: data, model, optimizer, schedule."""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import threading
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from ..data.batch_augment import BatchAugment
from ..data.datasets import ImageDataset, ResumableSampler, collate, shard_indices
from ..data.preprocess import Preprocessing, train_transform
from ..errors import UserError
from ..models.v2 import ShuffleNetV2, convert_routing
from .config import Config, DataConfig, ModelConfig, OptimConfig, ScheduleConfig, TrainConfig
from .distributed import Runtime

CACHE_DIR = Path.home() / ".cache" / "shufflenet"


# -- data ----------------------------------------------------------------------------------------
def preprocessing(data: DataConfig) -> Preprocessing:
    return Preprocessing(**vars(data.eval))


def split_paths(data: DataConfig) -> tuple[Path, Path]:
    """(train, val): the explicit paths, else ROOT/train and ROOT/val."""
    if data.root is None and (data.train is None or data.val is None):
        raise UserError("no data: pass --data DIR (a folder holding train/ and val/) or set data.train and data.val")
    root = Path(data.root) if data.root else None
    return Path(data.train) if data.train else root / "train", Path(data.val) if data.val else root / "val"


def build_datasets(data: DataConfig) -> tuple[ImageDataset, ImageDataset]:
    augment = data.augment
    train_steps = None if augment.on_device else train_transform(
        augment.crop, augment.crop_size, augment.scale, augment.padding, augment.hflip, augment.color_jitter,
        augment.auto_augment, augment.random_erasing, data.eval.interpolation,
    )
    train_path, val_path = split_paths(data)
    train_set = ImageDataset.from_path(train_path, train_steps)
    if data.train_per_class is not None:
        train_set = train_set.first_per_class(data.train_per_class)
    val_set = relabel(eval_dataset(val_path, preprocessing(data)), train_set.classes, val_path, "the training data's")
    if data.cache_decoded:
        for dataset in (train_set, val_set):
            dataset.cache_decoded(CACHE_DIR)
    # one image through the augmentation here: a setting it cannot apply fails now, in one line (the
    # random draws are put back, so that the model's initialisation stays as it was)
    try:
        with torch.random.fork_rng(devices=[]):
            train_set[0]
    except (ValueError, RuntimeError, TypeError) as error:  # e.g. a pad crop larger than the padded image
        raise UserError(f"the training augmentation fails on {train_set.samples[0][0]}: {error}") from None
    return train_set, val_set


def relabel(dataset: ImageDataset, classes: Sequence[str], path: Path, whose: str) -> ImageDataset:
    """``dataset`` with ``classes`` and each label the index of its class name there: a folder holding
    only some of the classes numbers them from 0 itself, so its own labels would name other classes."""
    index = {name: i for i, name in enumerate(classes)}
    unknown = [name for name in dataset.classes if name not in index]
    if unknown:
        raise UserError(f"{path}: {len(unknown)} class(es) not among {whose} {len(classes)} classes ({first_names(classes, 10)}): "
                        f"{', '.join(unknown[:10])}")
    labels = [index[name] for name in dataset.classes]
    return ImageDataset([(file, labels[label]) for file, label in dataset.samples], list(classes), dataset.transform)


def first_names(names: Sequence[str], count: int) -> str:
    """The first ``count`` of ``names`` for a message, with "..." when there are more."""
    return ", ".join(list(names)[:count]) + (", ..." if len(names) > count else "")


def device_augment(data: DataConfig) -> BatchAugment | None:
    """The training augmentation for the batch on the device, when ``data.augment.on_device`` asks."""
    augment = data.augment
    if not augment.on_device:
        return None
    settings = (("data.augment.crop", augment.crop, "pad"), ("data.augment.color_jitter", augment.color_jitter, 0.0),
                ("data.augment.random_erasing", augment.random_erasing, 0.0), ("data.cache_decoded", data.cache_decoded, True))
    unsupported = [f"{key}: {value!r}" for key, value, needed in settings if value != needed]
    if unsupported:
        raise UserError("data.augment.on_device covers crop: pad, hflip and trivial_augment_wide on images of one size "
                        f"(data.cache_decoded: true); this recipe sets {', '.join(unsupported)}")
    return BatchAugment(augment.crop_size, augment.padding, augment.hflip, augment.auto_augment == "trivial_augment_wide",
                        data.eval.interpolation)


def eval_dataset(path: Path, prep: Preprocessing) -> ImageDataset:
    return ImageDataset.from_path(path, v2.Compose(prep.geometry_steps()))


def train_loader(dataset: ImageDataset, batch_size: int, runtime: Runtime, seed: int, workers: int, repeats: int = 1) -> DataLoader:
    if repeats < 1:
        raise UserError(f"data.augment.repeats must be at least 1 (1: no repeated augmentation), got {repeats}")
    sampler = ResumableSampler(dataset, runtime.world_size, runtime.rank, shuffle=True, seed=seed, repeats=repeats)
    return _loader(dataset, batch_size, sampler, workers, drop_last=True)


def eval_loader(dataset: ImageDataset, batch_size: int, runtime: Runtime, workers: int) -> DataLoader:
    return _loader(dataset, batch_size, shard_indices(len(dataset), runtime.rank, runtime.world_size), workers, False)


def _loader(dataset, batch_size: int, sampler, workers: int, drop_last: bool) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        drop_last=drop_last,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=workers > 0,
        worker_init_fn=leave_stop_signals_to_the_main_process,
    )


def leave_stop_signals_to_the_main_process(worker_id: int) -> None:
    """A terminal's Ctrl-C, ``kill -- -PGID`` and Slurm's SIGTERM reach every process of the group.
    A worker killed by one would crash the main process before it saves its checkpoint, so workers
    ignore Ctrl-C, and SIGTERM from anyone but their main process. The main process's own SIGTERM is
    how Python's exit ends workers that an uncaught exception kept alive: on it a worker exits quietly
    (status 0), as PyTorch's own worker handler does, or that exit hangs."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if not hasattr(signal, "sigwaitinfo"):  # no sender to tell apart (macOS, Windows): keep PyTorch's handler
        return
    parent = os.getppid()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # delivered to the thread below instead

    def exit_on_the_main_process_sigterm() -> None:
        while signal.sigwaitinfo({signal.SIGTERM}).si_pid != parent:
            pass
        os._exit(0)

    threading.Thread(target=exit_on_the_main_process_sigterm, daemon=True).start()


def normalizer(prep: Preprocessing, device: torch.device) -> nn.Module:
    """uint8 batch -> float, normalised, channel order of the model."""
    return nn.Sequential(*prep.tensor_steps()).to(device)


def batch_mixer(data: DataConfig, num_classes: int) -> v2.Transform | None:
    """MixUp and/or CutMix on the normalised batch (one of them per batch when both are on)."""
    mixers = []
    if data.augment.mixup_alpha > 0:
        mixers.append(v2.MixUp(alpha=data.augment.mixup_alpha, num_classes=num_classes))
    if data.augment.cutmix_alpha > 0:
        mixers.append(v2.CutMix(alpha=data.augment.cutmix_alpha, num_classes=num_classes))
    if not mixers:
        return None
    return mixers[0] if len(mixers) == 1 else v2.RandomChoice(mixers)


def build_ema(model: nn.Module, train: TrainConfig) -> AveragedModel | None:
    """The weights' exponential moving average over optimizer steps (BN statistics included), or None.

    With ``train.ema_warmup`` the decay at update n is ``min(ema_decay, (1 + n) / (10 + n))``, as in
    TensorFlow's ``ExponentialMovingAverage(num_updates=step)``: the average spans about the last
    n / 9 steps until it reaches ``ema_decay``. Without it the random initial weights keep a share of
    ``ema_decay ** n``, which at 0.9998 is still 46% after 3,900 steps (10 CIFAR epochs): a short run
    would end with, and save, an average that reads chance."""
    if not train.ema_decay:
        return None

    def update(averaged, current, n_averaged: torch.Tensor) -> None:
        n = n_averaged.item()  # AveragedModel has already synced on it this step (its n == 0 test)
        decay = min(train.ema_decay, (1 + n) / (10 + n)) if train.ema_warmup else train.ema_decay
        get_ema_multi_avg_fn(decay)(averaged, current, n_averaged)

    return AveragedModel(model, multi_avg_fn=update, use_buffers=True)


# -- model ---------------------------------------------------------------------------------------
def build_training_model(config: Config, class_names: list[str] | None = None, from_checkpoint: bool = False) -> nn.Module:
    """The model as training runs it: ``build_model``, then ShuffleNet V2 (torchvision layout) moved
    to its even/odd routing when ``train.even_odd_routing`` asks (the same function, no shuffle), or
    prepared for quantization-aware training when ``train.qat`` does.
    ``from_checkpoint``: a checkpoint holding every weight is loaded next, so ``model.pretrained``
    is not read (the run may have outlived that file)."""
    net = build_model(dataclasses.replace(config.model, pretrained=None) if from_checkpoint else config.model, class_names)
    if config.train.qat:
        from ..deploy.qat import prepare_qat

        return prepare_qat(net)
    return routed(net, "even_odd") if config.train.even_odd_routing else net


def routed(model: nn.Module, routing: str) -> nn.Module:
    """``model`` in ``routing`` ("shuffle": torchvision's channel order, the one every other zoo's
    V2 weights use); models with a single routing come back as they are."""
    reroutable = isinstance(model, ShuffleNetV2) and model.layout == "torchvision" and model.routing != routing
    return convert_routing(model, routing) if reroutable else model


def build_model(model: ModelConfig, class_names: list[str] | None = None) -> nn.Module:
    from .. import get_model

    kwargs = {**model.kwargs, "small_input": model.small_input}
    try:
        if model.pretrained:
            net = get_model(model.name, pretrained=model.pretrained, num_classes=model.num_classes, **kwargs)
        else:
            net = get_model(model.name, num_classes=model.num_classes, **kwargs)
    except (TypeError, ValueError) as error:
        raise UserError(f"model {model.name!r}: {error}") from None
    if class_names is not None:
        net.class_names = tuple(class_names)
    return net


def check_classes(config: Config, dataset: ImageDataset) -> None:
    found, expected = len(dataset.classes), config.model.num_classes
    if found > expected or (found < expected and not dataset.classes[0].isdigit()):
        raise UserError(
            f"the training data has {found} classes but model.num_classes is {expected}; pass --num-classes {found}"
        )


# -- optimisation --------------------------------------------------------------------------------
def scaled_lr(optim: OptimConfig, global_batch: int) -> float:
    """The linear scaling rule: lr is given for ``base_batch_size`` images per optimizer step."""
    return optim.lr if optim.base_batch_size is None else optim.lr * global_batch / optim.base_batch_size


def build_optimizer(model: nn.Module, optim: OptimConfig, global_batch: int) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (no_decay if optim.no_decay_1d and parameter.ndim <= 1 else decay).append(parameter)
    groups = [{"params": decay, "weight_decay": optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    lr = scaled_lr(optim, global_batch)
    if optim.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=optim.momentum, nesterov=optim.nesterov)
    return torch.optim.AdamW(groups, lr=lr)


def build_scheduler(optimizer, schedule: ScheduleConfig, steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-optimizer-step schedule: linear warm-up, then cosine, linear or constant decay."""
    total = max(1, schedule.epochs * steps_per_epoch)
    warmup = round(schedule.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return schedule.warmup_start_factor + (1 - schedule.warmup_start_factor) * step / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        shape = {"cosine": 0.5 * (1 + math.cos(math.pi * progress)), "linear": 1 - progress, "constant": 1.0}
        return schedule.final_lr_factor + (1 - schedule.final_lr_factor) * shape[schedule.decay]

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
