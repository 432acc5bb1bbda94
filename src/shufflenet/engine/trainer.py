"""``train(config, work_dir)``: setup, the epoch loop, checkpoints — one function, top to bottom.

Run it in one process, or under ``torchrun --nproc-per-node N`` for DDP (the environment decides).
Work dir layout: ``config.yaml`` (the resolved recipe), ``metrics.jsonl`` (one line per epoch),
``checkpoints/last.pt`` and ``best.pt`` (training state for ``--resume``), ``model.safetensors``
(the final weights with their metadata), ``curves.png`` and ``tb/`` (TensorBoard, when installed).
"""

from __future__ import annotations

import json
import random
import signal
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from ..errors import UserError
from ..files import atomic_destination, make_folder
from ..weights.checkpoint import non_finite
from . import builders
from .checkpoint import Position, copy_atomic, load_training_state, restore_rng_state, rng_state, save_atomic
from .config import Config, save_config
from .distill import build_distillation
from .distributed import Runtime, all_reduce_sum, barrier, init_runtime, shutdown
from .evaluate import autocast, evaluate, to_input


class TrainingDiverged(UserError):
    exit_code = 3


class TrainingInterrupted(UserError):
    """Exit status 128 + the signal number, the shell's convention: 130 for Ctrl-C, 143 for SIGTERM."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


def train(config: Config, work_dir: str | Path, resume: str | Path | bool = False, force: bool = False,
          recipe: str | Path | None = None) -> dict:
    """Train ``config``; ``resume=True`` continues from ``work_dir/checkpoints/last.pt`` if present.
    A fresh start into a work dir that holds a run's files needs ``force`` (it overwrites them), also
    under ``resume=True`` when the run left no checkpoint, or when ``resume`` names another run's
    checkpoint. ``recipe`` (the YAML file ``config`` came from) is never overwritten by a fresh start."""
    work_dir = Path(work_dir)
    if work_dir.exists() and not work_dir.is_dir():
        raise UserError(f"--work-dir {work_dir} is a file, not a folder")
    resume_path = _resume_path(resume, work_dir / "checkpoints")
    continues_this_run = resume_path is not None and resume_path.resolve().parent == (work_dir / "checkpoints").resolve()
    if not continues_this_run:
        if recipe is not None and Path(recipe).resolve() == (work_dir / "config.yaml").resolve():
            raise UserError(f"the recipe {recipe} is where the run writes its resolved config; move it or use another --work-dir")
        if not force:
            _refuse_to_overwrite(work_dir, leftovers_ok=resume is True)
    runtime = init_runtime(config.train.device)
    try:
        with StopRequest() as stop:
            return _train(config, work_dir, resume, runtime, stop)
    finally:
        shutdown()


def _train(config: Config, work_dir: Path, resume: str | Path | bool, runtime: Runtime, stop: StopRequest) -> dict:
    # ---- setup --------------------------------------------------------------------------------
    tc, device = config.train, runtime.device
    if tc.amp == "fp16" and device.type != "cuda":
        raise UserError("train.amp=fp16 needs a CUDA device; use bf16 on CPU")
    checkpoints = work_dir / "checkpoints"
    torch.manual_seed(tc.seed)
    random.seed(tc.seed)

    augment = builders.device_augment(config.data)  # None: the loader workers augment each image
    train_set, val_set = builders.build_datasets(config.data)
    builders.check_classes(config, train_set)
    train_loader = builders.train_loader(train_set, tc.batch_size, runtime, tc.seed, config.data.num_workers, config.data.augment.repeats)
    val_loader = builders.eval_loader(val_set, tc.batch_size, runtime, config.data.num_workers)
    steps_per_epoch = len(train_loader) // tc.grad_accum_steps
    if steps_per_epoch == 0:
        raise UserError(f"{len(train_set)} training images are fewer than one global batch; lower --batch-size")
    prep = builders.preprocessing(config.data)
    normalize = builders.normalizer(prep, device)
    mixer = builders.batch_mixer(config.data, config.model.num_classes)

    def train_input(images: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        images = images.to(device, non_blocking=True)
        return to_input(augment(images, seeds) if augment is not None else images, normalize, device, tc.channels_last)

    report_corrupt = CorruptReporter(config.data.strict, runtime)

    resume_path = _resume_path(resume, checkpoints)
    model = builders.build_training_model(config, train_set.classes, from_checkpoint=resume_path is not None)
    model.preprocessing = prep
    if tc.sync_bn and runtime.distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    if tc.channels_last:
        model.to(memory_format=torch.channels_last)
    global_batch = tc.batch_size * runtime.world_size * tc.grad_accum_steps
    optimizer = builders.build_optimizer(model, config.optim, global_batch)
    scheduler = builders.build_scheduler(optimizer, config.schedule, steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=tc.amp == "fp16")
    ema = builders.build_ema(model, tc)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=tc.label_smoothing)
    distillation = build_distillation(config.distill, train_set.classes, prep, device, tc.channels_last)

    position, history, best_top1 = Position(), [], -1.0
    if resume_path is not None:
        state = load_training_state(resume_path)
        _check_same_model(state, config, resume_path)
        model.load_state_dict(state["model"])
        try:
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
        except (KeyError, ValueError) as error:  # e.g. optim.name or optim.no_decay_1d changed
            raise UserError(f"{resume_path}: its optimizer state does not fit the recipe's optim settings ({error}); "
                            "resume with the recipe it was trained with") from None
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        position, history, best_top1 = Position(**state["position"]), state["history"], state["best_top1"]
        restore_rng_state(state["rng"])
        _say(runtime, f"resumed from {resume_path} at epoch {position.epoch + 1}, step {position.global_step}")
    if runtime.is_main:  # only now that the setup holds: a recipe that fails leaves nothing behind
        make_folder(work_dir)
        save_config(config, work_dir / "config.yaml")

    def on_every_rank(error: UserError) -> UserError:
        """An error every rank raises alike (it follows an all-reduce): rank 0 alone prints it."""
        error.printed = runtime.is_main
        return error

    def diverged(what: str) -> UserError:
        last = checkpoints / "last.pt"
        kept = f"the last good checkpoint is kept in {last}" if last.is_file() else "no checkpoint was written yet"
        return on_every_rank(TrainingDiverged(f"{what} at step {position.global_step}; {kept} "
                                              "(try a lower optim.lr or set optim.clip_grad_norm)"))

    device_ids = [device.index] if device.type == "cuda" else None
    ddp_model = DistributedDataParallel(model, device_ids=device_ids) if runtime.distributed else model
    forward = torch.compile(ddp_model) if tc.compile else ddp_model
    metrics_log = MetricsLog(work_dir, runtime)

    def save(path: Path) -> None:
        """Rank 0 writes the full training state; every rank waits so no one runs ahead.

        A step can turn the weights or BN statistics non-finite while its own loss (computed before
        the update) was still finite, so they are checked here: a diverged state never replaces a good one."""
        finite = not non_finite(model.state_dict())
        # BN statistics differ by rank, so every rank must agree the average is finite
        if all_reduce_sum(torch.tensor([float(finite)], device=device), runtime).item() < runtime.world_size:
            raise diverged("the weights became non-finite")
        if runtime.is_main:
            save_atomic({
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "ema": ema.state_dict() if ema is not None else None,
                "position": vars(position).copy(),
                "history": history,
                "best_top1": best_top1,
                "rng": rng_state(),
                "config": config.to_dict(),
                "class_names": list(train_set.classes),
            }, path)
        barrier(runtime)

    _say(runtime, f"training {config.model.name} on {len(train_set)} images ({len(train_set.classes)} classes), "
         f"{runtime.world_size} process(es) on {device}, global batch {global_batch}, "
         f"lr {optimizer.param_groups[0]['initial_lr']:.4g}, {config.schedule.epochs} epochs of {steps_per_epoch} steps")

    # ---- loop ---------------------------------------------------------------------------------
    for epoch in range(position.epoch, config.schedule.epochs):
        model.train()
        skip_batches = position.step_in_epoch * tc.grad_accum_steps
        train_loader.sampler.set_position(epoch, skip_batches * tc.batch_size)
        window = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, images, corrupt images
        epoch_totals = torch.zeros(3, dtype=torch.float64)
        # the bar is cleared on leaving the block, so that an error message prints on a line of its own
        with tqdm(total=steps_per_epoch, initial=position.step_in_epoch, desc=f"epoch {epoch + 1}/{config.schedule.epochs}",
                  disable=not runtime.is_main, dynamic_ncols=True, leave=False, file=sys.stderr) as bar:
            start, timed_images = time.perf_counter(), 0.0
            batches = iter(train_loader)
            while position.step_in_epoch < steps_per_epoch:
                for micro in range(tc.grad_accum_steps):
                    images, labels, seeds, corrupt = next(batches)
                    report_corrupt(corrupt)
                    window[2] += len(corrupt)
                    if not len(labels):
                        continue
                    inputs, labels = train_input(images, seeds), labels.to(device)
                    targets = labels if mixer is None else None
                    if mixer is not None:
                        inputs, targets = mixer(inputs, labels)
                    last_micro = micro == tc.grad_accum_steps - 1
                    sync_context = ddp_model.no_sync() if runtime.distributed and not last_micro else nullcontext()
                    with sync_context, autocast(device, tc.amp):
                        logits = forward(inputs).float()
                        loss = loss_fn(logits, targets)
                        if distillation is not None:
                            loss = distillation(logits, inputs, loss)
                    scaler.scale(loss / tc.grad_accum_steps).backward()
                    window[0] += loss.detach() * len(labels)
                    window[1] += len(labels)
                if config.optim.clip_grad_norm:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(model.parameters(), config.optim.clip_grad_norm)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                if ema is not None:
                    ema.update_parameters(model)
                position.step_in_epoch += 1
                position.global_step += 1
                bar.update()

                checkpoint_due = tc.checkpoint_every_steps > 0 and position.global_step % tc.checkpoint_every_steps == 0
                # The ranks agree on a stop at every step, not every log_every_steps: torchrun kills its
                # workers 30 s after forwarding a SIGTERM, fewer than 20 steps of a slow run (one scalar).
                stopping = stop.requested
                if runtime.distributed:
                    stopping = all_reduce_sum(torch.tensor([float(stopping)], device=device), runtime).item() > 0
                if checkpoint_due or stopping or position.global_step % tc.log_every_steps == 0:
                    # a copy: the sum is in place, .cpu() of a CPU tensor is itself, and window is zeroed next
                    totals = all_reduce_sum(window.clone(), runtime).cpu()
                    window.zero_()
                    if not torch.isfinite(totals[0]):
                        raise diverged(f"the loss became {totals[0].item()} in epoch {epoch + 1}")
                    epoch_totals += totals[:3]
                    timed_images += totals[1].item()
                    speed = timed_images / (time.perf_counter() - start)
                    bar.set_postfix(loss=f"{totals[0].item() / max(totals[1].item(), 1):.4f}",
                                    lr=f"{optimizer.param_groups[0]['lr']:.4g}", img_s=f"{speed:.0f}")
                    if checkpoint_due or stopping:
                        save(checkpoints / "last.pt")
                    if stopping:
                        raise on_every_rank(TrainingInterrupted(
                            f"stopped by {stop.name}; checkpoint saved at epoch {epoch + 1}, step {position.global_step} "
                            f"in {checkpoints / 'last.pt'} (continue with --resume)", stop.signum or signal.SIGTERM))
        totals = all_reduce_sum(window, runtime).cpu()
        if not torch.isfinite(totals[0]):
            raise diverged(f"the loss became {totals[0].item()} in epoch {epoch + 1}")
        epoch_totals += totals
        if not epoch_totals[1]:
            raise on_every_rank(UserError(f"no training image could be read in epoch {epoch + 1} ({int(epoch_totals[2])} skipped)"))
        train_seconds = time.perf_counter() - start

        # ---- evaluation and checkpoints, at the end of each epoch --------------------------------
        row = {
            "epoch": epoch + 1,
            "step": position.global_step,
            "lr": optimizer.param_groups[0]["lr"],
            "train_loss": epoch_totals[0].item() / max(epoch_totals[1].item(), 1),
            "train_images_per_s": (epoch_totals[1].item()) / train_seconds,
            "skipped_images": int(epoch_totals[2].item()),
        }
        last_epoch = epoch + 1 == config.schedule.epochs
        if (epoch + 1) % tc.eval_every_epochs == 0 or last_epoch:
            val = evaluate(model, val_loader, config.model.num_classes, normalize, runtime, tc.amp, tc.channels_last, report_corrupt)
            row.update(val_loss=val["loss"], val_top1=val["top1"], val_top5=val["top5"])
            if ema is not None:
                ema_val = evaluate(ema.module, val_loader, config.model.num_classes, normalize, runtime, tc.amp, tc.channels_last)
                row.update(ema_top1=ema_val["top1"], ema_top5=ema_val["top5"])
        row["time_s"] = round(time.perf_counter() - start, 2)
        history.append(row)
        metrics_log.write(history)
        _say(runtime, "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
        position = Position(epoch + 1, 0, position.global_step)
        save(checkpoints / "last.pt")
        top1 = row.get("ema_top1", row.get("val_top1", -1.0))
        if top1 > best_top1:
            best_top1 = top1
            if runtime.is_main:
                copy_atomic(checkpoints / "last.pt", checkpoints / "best.pt")

    # ---- finish: BN recalibration, final weights, curves ------------------------------------
    final, scored_as = (ema.module, "ema") if ema is not None else (model, "val")
    summary = {"epochs": config.schedule.epochs, "best_top1": best_top1, **(history[-1] if history else {})}
    if f"{scored_as}_top5" in summary:  # final_*: the accuracy of the weights in model.safetensors (older runs lack EMA top-5)
        summary.update(final_top1=summary[f"{scored_as}_top1"], final_top5=summary[f"{scored_as}_top5"])
    if tc.bn_recalibration_batches:
        recalibrate_bn(final, train_loader, train_input, tc.bn_recalibration_batches)
        val = evaluate(final, val_loader, config.model.num_classes, normalize, runtime, tc.amp, tc.channels_last)
        summary.update(recalibrated_top1=val["top1"], recalibrated_top5=val["top5"], final_top1=val["top1"], final_top5=val["top5"])
        _say(runtime, f"after BN recalibration: top-1 {val['top1']:.2f}  top-5 {val['top5']:.2f}")
    if runtime.is_main:
        metadata = {"best_top1": best_top1, "epochs": config.schedule.epochs}
        save_weights(builders.routed(final, "shuffle"), work_dir / final_weights_name(config), metadata)
        metrics_log.finish(history)
        (work_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    barrier(runtime)
    return summary


# -- helpers of the loop ----------------------------------------------------------------------
def _check_same_model(state: dict, config: Config, path: Path) -> None:
    """Same-shaped weights can mean a different network (V2's even/odd routing permutes channels),
    so a checkpoint resumes only under the model settings it was trained with."""
    def settings(raw: dict) -> dict:
        model = {f"model.{k}": v for k, v in raw["model"].items() if k != "pretrained"}
        return {**model, **{f"train.{k}": raw["train"].get(k, False) for k in ("even_odd_routing", "qat")}}

    trained, current = settings(state["config"]), settings(config.to_dict())
    if trained != current:
        keys = sorted(trained.keys() | current.keys())
        changed = ", ".join(f"{k}: {trained.get(k)!r} -> {current.get(k)!r}" for k in keys if trained.get(k) != current.get(k))
        raise UserError(f"{path} was trained with other model settings ({changed}); resume with the recipe it was trained with")


RUN_FILES = ("checkpoints/last.pt", "checkpoints/best.pt", "model.safetensors", "model.int8.onnx", "config.yaml", "metrics.jsonl",
             "summary.json", "curves.png")


def _refuse_to_overwrite(work_dir: Path, leftovers_ok: bool) -> None:
    """``leftovers_ok``: a run killed before its first checkpoint left only these, and ``--resume``
    starts it afresh (one command serves every session)."""
    leftovers = ("config.yaml", "curves.png") if leftovers_ok else ()
    found = [name for name in RUN_FILES if (work_dir / name).is_file() and name not in leftovers]
    if found:
        resumable = "pass --resume to continue it, " if "checkpoints/last.pt" in found else "it has no checkpoint to resume; "
        raise UserError(f"{work_dir} already holds a run's files ({', '.join(found)}); {resumable}"
                        "pass --force to start afresh and overwrite them, or another --work-dir")


def _resume_path(resume: str | Path | bool, checkpoints: Path) -> Path | None:
    if resume is True:
        last = checkpoints / "last.pt"
        return last if last.is_file() else None  # nothing yet: start afresh, so one command serves every session
    return Path(resume) if resume else None


def _say(runtime: Runtime, message: str) -> None:
    if runtime.is_main:
        tqdm.write(message, file=sys.stderr)


class CorruptReporter:
    """Warns once per unreadable image (or raises with ``strict``); the loop counts them."""

    def __init__(self, strict: bool, runtime: Runtime) -> None:
        self.strict, self.runtime, self.seen = strict, runtime, set()

    def __call__(self, corrupt: list) -> None:
        for sample in corrupt:
            if self.strict:
                raise UserError(f"unreadable image {sample.path}: {sample.reason} (drop --strict-data to skip such images)")
            if sample.path not in self.seen:
                self.seen.add(sample.path)
                tqdm.write(f"warning: skipped unreadable image {sample.path}: {sample.reason}", file=sys.stderr)


class StopRequest:
    """SIGTERM or Ctrl-C asks the loop to save a checkpoint and stop; a second one stops at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __enter__(self) -> StopRequest:
        self.signum = None
        self.previous = [signal.signal(sig, self._handle) for sig in self.SIGNALS]
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in zip(self.SIGNALS, self.previous):
            signal.signal(sig, handler)

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.requested else "a signal to another process"

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.signum = signum


class MetricsLog:
    """metrics.jsonl (rewritten whole, so a resumed run has no duplicate lines), TensorBoard, curves."""

    def __init__(self, work_dir: Path, runtime: Runtime) -> None:
        self.work_dir, self.enabled = work_dir, runtime.is_main
        self.board = None
        if self.enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.board = SummaryWriter(str(work_dir / "tb"))
            except ImportError:  # tensorboard is optional
                pass

    def write(self, history: list[dict]) -> None:
        if not self.enabled:
            return
        path = self.work_dir / "metrics.jsonl"
        with atomic_destination(path) as partial:
            partial.write_text("".join(json.dumps(row) + "\n" for row in history))
        if self.board is not None:
            row = history[-1]
            for key, value in row.items():
                if isinstance(value, float) and key != "epoch":
                    self.board.add_scalar(key, value, row["epoch"])
            self.board.flush()

    def finish(self, history: list[dict]) -> None:
        from .plots import plot_curves

        if history:
            plot_curves(history, self.work_dir / "curves.png")
        if self.board is not None:
            self.board.close()


@torch.no_grad()
def recalibrate_bn(model: nn.Module, loader, train_input: Callable, batches: int) -> None:
    """Megvii's final pass: re-estimate BN running statistics as a plain average over ``batches``
    of training inputs (``train_input(images, seeds)``: augmented and normalised on the device)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average
    model.train()
    loader.sampler.set_position(0)
    for index, (images, _, seeds, _) in enumerate(loader):
        if index == batches:
            break
        if len(images):
            model(train_input(images, seeds))
    model.eval()


def final_weights_name(config: Config) -> str:
    return "model.int8.onnx" if config.train.qat else "model.safetensors"


def save_weights(model: nn.Module, path: Path, extra: dict) -> None:
    """The final weights with their metadata (architecture, classes, preprocessing); a QAT model
    as the INT8 ONNX file it simulates (its weights have BN folded in, which our format has no place for)."""
    from ..weights import save_checkpoint

    if path.suffix == ".onnx":
        from ..deploy.export import export_onnx

        with atomic_destination(path) as partial:
            export_onnx(model, partial, dynamic_batch=True)
    else:
        save_checkpoint(model, path, extra_metadata=extra)
