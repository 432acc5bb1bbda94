"""The training engine: configs, data, train/test commands, DDP equivalence, kill-and-resume.

Runs on tiny data copied from the CIFAR-10 subset shipped in demo/ (no network, no ../shared).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import SUBSET, TINY, assert_same_weights, cli, final_weights, make_folder
from shufflenet import get_model
from shufflenet.engine.config import load_config
from shufflenet.errors import UserError
from shufflenet.weights import save_checkpoint

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def one_thread():
    """Two intra-op threads on two cores shared with other test processes spin against each
    other (10x slower in measurements); one thread per process keeps these tests fast."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def run_subprocess(args: list, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *map(str, args)], env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=120, **kwargs)


def start_run_until(checkpoint: Path, args: list, **kwargs) -> subprocess.Popen:
    """Start ``python ARGS`` and return once it has written ``checkpoint`` (or ended, or 90 s passed)."""
    process = subprocess.Popen([sys.executable, *map(str, args)], env=SUBPROCESS_ENV, stdout=subprocess.DEVNULL, **kwargs)
    deadline = time.time() + 90
    while not checkpoint.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    return process


# -- config ----------------------------------------------------------------------------------------
def test_unknown_key_lists_the_valid_keys(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("optim: {lr: 0.1, momentun: 0.9}\n")
    with pytest.raises(UserError, match=r"unknown config key 'optim\.momentun'.*valid keys in optim: name, lr, base_batch_size, momentum"):
        load_config(path)


def test_wrong_type_and_bad_choice_fail_at_once(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("schedule: {epochs: ten}\n")
    with pytest.raises(UserError, match=re.escape("schedule.epochs: expected int, got 'ten'")):
        load_config(path)
    with pytest.raises(UserError, match=re.escape("train.amp: expected one of 'none', 'bf16', 'fp16'")):
        load_config(None, ["train.amp=fp8"])


def test_base_inheritance_and_overrides() -> None:
    config = load_config(REPO / "configs/cifar10/shufflenet_v1_g3_x1_0.yaml", ["optim.lr=0.2", "data.eval.mean=[0, 0, 0]"])
    assert config.model.name == "shufflenet_v1_g3_x1_0"
    assert config.model.small_input and config.optim.nesterov  # from the base file
    assert config.optim.lr == 0.2 and config.data.eval.mean == (0.0, 0.0, 0.0)
    assert load_config(None, ["optim.lr=1e-3"]).optim.lr == 0.001  # a float although YAML 1.1 reads a string


def test_every_shipped_config_is_valid() -> None:
    paths = sorted((REPO / "configs").rglob("*.yaml"))
    assert len(paths) >= 7
    for path in paths:
        model = load_config(path).model  # and its model builds: the kwargs are the model's own
        get_model(model.name, num_classes=model.num_classes, small_input=model.small_input, **model.kwargs)


def test_cli_reports_config_errors_without_traceback(tiny, capsys) -> None:
    config, data = tiny
    assert cli("train", config, "--data", data, "--set", "train.batchsize=4") == 2
    err = capsys.readouterr().err
    assert "unknown config key 'train.batchsize'" in err and "batch_size" in err and "Traceback" not in err
    assert cli("test", config, "--data", data) == 2  # a recipe has no pretrained weights to fall back on
    assert "is a recipe: give the CHECKPOINT to evaluate with it" in capsys.readouterr().err


# -- training, corrupt data, test command ------------------------------------------------------------
def test_corrupt_image_is_skipped_and_counted_or_fatal_with_strict(tiny, tmp_path: Path, capsys) -> None:
    config, data = tiny
    bad = data / "train" / "frog" / "zz_corrupt.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    work = tmp_path / "run"
    assert cli("train", config, "--data", data, "--epochs", "1", "--work-dir", work) == 0
    err = capsys.readouterr().err
    assert f"skipped unreadable image {bad}" in err
    row = json.loads((work / "metrics.jsonl").read_text().splitlines()[0])
    assert row["skipped_images"] == 1

    assert cli("train", config, "--data", data, "--epochs", "1", "--work-dir", tmp_path / "strict", "--strict-data") == 2
    assert f"unreadable image {bad}" in capsys.readouterr().err


def test_short_run_beats_chance_and_test_command_agrees(tmp_path: Path, capsys) -> None:
    """Airplane vs frog (chance 50%): a few epochs on 200 images reach well above it, and so does the
    EMA of the weights (48 steps at decay 0.9998: only its warm-up makes it forget the initial
    weights), which is what ``model.safetensors`` holds and ``shufflenet test`` measures again."""
    data = make_folder(tmp_path / "data", ("airplane", "frog"), 100, 50)
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    work = tmp_path / "run"
    code = cli("train", config, "--data", data, "--epochs", 4, "--batch-size", 16, "--work-dir", work,
               "--set", "train.log_every_steps=5", "--set", "optim.lr=0.0125", "--set", "train.ema_decay=0.9998")
    assert code == 0
    history = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in history] == [1, 2, 3, 4]
    assert history[-1]["val_top1"] >= 75.0 and history[-1]["ema_top1"] >= 75.0, history
    summary = json.loads((work / "summary.json").read_text())
    assert (summary["final_top1"], summary["final_top5"]) == (history[-1]["ema_top1"], history[-1]["ema_top5"])
    assert f"done: top-1 {summary['final_top1']:.2f}%" in capsys.readouterr().out
    for name in ("curves.png", "model.safetensors", "checkpoints/last.pt", "checkpoints/best.pt", "config.yaml"):
        assert (work / name).is_file(), name

    assert cli("test", config, work / "model.safetensors", "--data", data, "--json", "--out", tmp_path) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["top1"] == pytest.approx(summary["final_top1"])  # same weights, same val set
    assert result["top5"] == 100.0 and result["images"] == 100
    assert len(result["per_class"]) == 2 and result["class_names"] == ["airplane", "frog"]
    assert (tmp_path / "confusion.png").stat().st_size > 1000


def test_the_ema_warms_up_as_tensorflows_num_updates_so_a_short_run_forgets_its_initial_weights() -> None:
    """TensorFlow's ExponentialMovingAverage(decay, num_updates=n): shadow = d * shadow + (1 - d) * w
    with d = min(decay, (1 + n) / (10 + n)). Weights that start at 0 and are 1 after the first step:
    the average must follow that reference and, after 3,900 steps (10 CIFAR epochs), be ~1; without
    the warm-up the initial 0 still holds 0.9998 ** 3899 = 46% of it."""
    from torch import nn

    from shufflenet.engine.builders import build_ema
    from shufflenet.engine.config import TrainConfig

    steps, decay = 3900, 0.9998
    averages = {}
    for warmup in (True, False):
        model = nn.Sequential(nn.Linear(1, 1, bias=False), nn.BatchNorm1d(1))  # BN: an integer buffer too
        model[0].weight.data.zero_()
        ema = build_ema(model, TrainConfig(ema_decay=decay, ema_warmup=warmup))
        shadow = 0.0
        for n in range(steps):
            ema.update_parameters(model)
            if n > 0:
                d = min(decay, (1 + n) / (10 + n)) if warmup else decay
                shadow = d * shadow + (1 - d) * 1.0
            if n in (1, 10, 100, steps - 1):
                assert ema.module[0].weight.item() == pytest.approx(shadow, abs=1e-5), (warmup, n)
            model[0].weight.data.fill_(1.0)
        averages[warmup] = ema.module[0].weight.item()
    assert averages[True] > 0.999
    assert averages[False] == pytest.approx(1 - decay ** (steps - 1), abs=1e-4)
    assert build_ema(model, TrainConfig(ema_decay=None)) is None


# -- long runs: kill and resume; several processes -------------------------------------------------
def test_sigkill_then_resume_matches_an_uninterrupted_run(tiny, tmp_path: Path) -> None:
    config, data = tiny
    args = ["-m", "shufflenet", "train", config, "--data", data, "--epochs", 3, "--set", "train.checkpoint_every_steps=2"]
    reference = tmp_path / "reference"
    assert run_subprocess([*args, "--work-dir", reference]).returncode == 0

    killed = tmp_path / "killed"
    checkpoint = killed / "checkpoints" / "last.pt"
    process = start_run_until(checkpoint, [*args, "--work-dir", killed], stderr=subprocess.DEVNULL)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    assert not (killed / "model.safetensors").exists(), "the run finished before it was killed"
    step = torch.load(checkpoint, weights_only=True)["position"]["global_step"]
    assert 0 < step < 12

    resumed = run_subprocess([*args, "--work-dir", killed, "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    assert f"step {step}" in resumed.stderr
    assert_same_weights(final_weights(reference), final_weights(killed), atol=1e-6)


def test_two_processes_match_one_with_the_same_global_batch(tiny, tmp_path: Path) -> None:
    """2 x batch 4 under torchrun (gloo) against 1 x batch 8.

    Both see the same images in the same steps with the same augmentation (seeded per sample),
    and DDP averages the gradients. Batch-norm statistics would still differ (each rank normalises
    its own 4 images, and SyncBN needs a GPU), so BN runs in eval mode (``norm_eval``): then the
    two runs compute the same function and must agree up to float summation order.
    """
    config, data = tiny
    common = ["train", config, "--data", data, "--set", "model.kwargs={norm_eval: true}", "--set", "optim.lr=0.01"]
    single = run_subprocess(["-m", "shufflenet", *common, "--batch-size", 8, "--work-dir", tmp_path / "one"])
    assert single.returncode == 0, single.stderr
    double = run_subprocess(["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", 2,
                             "-m", "shufflenet", *common, "--batch-size", 4, "--work-dir", tmp_path / "two"])
    assert double.returncode == 0, double.stderr
    assert double.stdout.count("done: top-1") == 1  # rank 0 reports for the job
    rows = [[json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()] for run in ("one", "two")]
    for one, two in zip(*rows):
        assert two["train_loss"] == pytest.approx(one["train_loss"], abs=1e-4)
        assert two["val_top1"] == one["val_top1"]
    assert_same_weights(final_weights(tmp_path / "one"), final_weights(tmp_path / "two"), atol=1e-4)


def last_line(stderr: str) -> str:
    """The last line the user sees (progress bars redraw with carriage returns)."""
    return [line for line in stderr.replace("\r", "\n").splitlines() if line.strip()][-1]


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_saves_a_checkpoint_then_resume_finishes_the_run(tiny, tmp_path: Path, capsys, stop) -> None:
    """SIGTERM or Ctrl-C mid-epoch: exit status 128 + the signal number (as the shell reports a
    killed job), a checkpoint at the step where it stopped, one line of message, and --resume ends
    where an uninterrupted run ends. The signal goes to the whole process group, as a terminal's
    Ctrl-C (or Slurm's SIGTERM) does: loader workers must not die before the checkpoint is saved."""
    config, data = tiny
    args = ["train", config, "--data", data, "--epochs", 3, "--set", "data.num_workers=1"]
    assert cli(*args, "--work-dir", tmp_path / "reference") == 0

    work = tmp_path / "stopped"
    checkpoint = work / "checkpoints" / "last.pt"  # first written at the end of epoch 1 (4 steps)
    process = start_run_until(checkpoint, ["-m", "shufflenet", *args, "--work-dir", work],
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
    os.killpg(process.pid, stop)
    stderr = process.communicate(timeout=60)[1]
    assert process.returncode == 128 + stop, stderr
    assert not (work / "model.safetensors").exists(), "the run finished before the signal"
    position = torch.load(checkpoint, weights_only=True)["position"]
    assert position["step_in_epoch"] > 0, "no checkpoint at the interruption point (only the epoch-end one)"
    assert "Traceback" not in stderr
    assert last_line(stderr) == (
        f"shufflenet train: error: stopped by {stop.name}; checkpoint saved at epoch {position['epoch'] + 1}, "
        f"step {position['global_step']} in {checkpoint} (continue with --resume)")

    capsys.readouterr()
    assert cli(*args, "--work-dir", work, "--resume") == 0
    assert f"resumed from {checkpoint} at epoch {position['epoch'] + 1}, step {position['global_step']}" in capsys.readouterr().err
    assert_same_weights(final_weights(tmp_path / "reference"), final_weights(work), atol=1e-6)


def test_a_sigterm_to_torchrun_stops_every_rank_at_the_next_step(tiny, tmp_path: Path) -> None:
    """torchrun forwards a SIGTERM to its workers and kills them 30 s later. The ranks must agree on
    the stop at the next step, not the next log step (here never: log_every_steps 1000), or a slow
    run is killed before it saves (session 30: 20 steps of 2 s each)."""
    config, data = tiny
    work = tmp_path / "run"
    checkpoint = work / "checkpoints" / "last.pt"  # first written at the end of epoch 1
    process = start_run_until(checkpoint, ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", 2,
                                           "-m", "shufflenet", "train", config, "--data", data, "--epochs", 200,
                                           "--batch-size", 4, "--work-dir", work, "--set", "train.log_every_steps=1000"],
                              stderr=subprocess.PIPE, text=True)
    sent = time.time()
    process.send_signal(signal.SIGTERM)
    stderr = process.communicate(timeout=60)[1]
    assert time.time() - sent < 25, "the ranks did not stop before torchrun's 30 s grace ran out"
    position = torch.load(checkpoint, weights_only=True)["position"]
    assert position["step_in_epoch"] > 0, "no checkpoint at the interruption point (only the epoch-end one)"
    assert (f"stopped by SIGTERM; checkpoint saved at epoch {position['epoch'] + 1}, step {position['global_step']}"
            in stderr), stderr
    assert stderr.count("stopped by SIGTERM") == 1, "printed by every rank, not once"


def test_an_uncaught_error_in_the_python_api_exits_instead_of_hanging(tiny, tmp_path: Path) -> None:
    """An uncaught exception keeps the loop's frames, and with them the persistent loader workers,
    alive until Python's exit, which ends them with SIGTERM. Workers that ignored every SIGTERM made
    that exit wait for them forever; they must obey the one from their own main process."""
    config, data = tiny
    script = ("import sys; from shufflenet.engine import load_config, train; "
              "train(load_config(sys.argv[1], ['data.root=' + sys.argv[2], 'data.num_workers=2', 'optim.lr=1e9', "
              "'train.log_every_steps=1']), sys.argv[3])")
    result = run_subprocess(["-c", script, config, data, tmp_path / "run"])  # a hang fails with TimeoutExpired
    assert result.returncode == 1
    assert last_line(result.stderr).startswith("shufflenet.engine.trainer.TrainingDiverged: the loss became")


def test_resume_does_not_read_the_pretrained_weights_again(tiny, tmp_path: Path) -> None:
    """A fine-tune resumes from its checkpoint even when the weights it started from are gone."""
    config, data = tiny
    args = ["train", config, "--data", data]
    assert cli(*args, "--epochs", 1, "--work-dir", tmp_path / "base") == 0
    start = tmp_path / "base" / "model.safetensors"
    tune = [*args, "--pretrained", start, "--work-dir", tmp_path / "tune"]
    assert cli(*tune, "--epochs", 1) == 0
    start.unlink()
    assert cli(*tune, "--epochs", 2, "--resume") == 0
    assert len((tmp_path / "tune" / "metrics.jsonl").read_text().splitlines()) == 2


def test_divergence_stops_and_keeps_the_last_finite_checkpoint(tiny, tmp_path: Path, capsys) -> None:
    """lr 1e4 with a checkpoint every step: within a few steps the weights and BN statistics overflow
    (sometimes while that step's loss, computed before the update, is still finite). The run stops
    with status 3 naming the step, and last.pt holds the state of the step before, all finite."""
    config, data = tiny
    work = tmp_path / "run"
    code = cli("train", config, "--data", data, "--epochs", 3, "--work-dir", work, "--set", "optim.lr=1e4",
               "--set", "schedule.warmup_epochs=0", "--set", "train.checkpoint_every_steps=1")
    assert code == 3
    message = last_line(capsys.readouterr().err)
    failed_step = int(re.search(r"became (?:nan|inf|-inf|non-finite).* at step (\d+);", message).group(1))
    assert message.startswith("shufflenet train: error: the ") and f"kept in {work / 'checkpoints' / 'last.pt'}" in message

    state = torch.load(work / "checkpoints" / "last.pt", weights_only=True)
    assert state["position"]["global_step"] == failed_step - 1 >= 1
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())
    assert all(torch.isfinite(t).all() for s in state["optimizer"]["state"].values() for t in s.values())
    assert not (work / "model.safetensors").exists()


def test_resume_refuses_other_model_settings(tiny, tmp_path: Path, capsys) -> None:
    """The even/odd-routed V2 has the same parameter shapes as the shuffle-routed one: resuming one
    run's checkpoint under the other's recipe would train a scrambled network without a word."""
    config, data = tiny
    work = tmp_path / "run"
    assert cli("train", config, "--data", data, "--epochs", 1, "--work-dir", work) == 0
    capsys.readouterr()
    code = cli("train", config, "--data", data, "--epochs", 2, "--work-dir", work, "--resume",
               "--set", "train.even_odd_routing=true")
    assert code == 2
    assert "other model settings (train.even_odd_routing: False -> True)" in capsys.readouterr().err
    for change in ("optim.name=adamw", "optim.no_decay_1d=false"):  # other parameter groups or optimizer state
        assert cli("train", config, "--data", data, "--epochs", 2, "--work-dir", work, "--resume", "--set", change) == 2
        assert "its optimizer state does not fit the recipe's optim settings" in capsys.readouterr().err


def test_even_odd_routed_training_saves_torchvision_order(tiny, tmp_path: Path) -> None:
    """Training in the even/odd twin is invisible outside: model.safetensors is in torchvision's
    channel order (a plain model loads it) and `test` reads the routed training checkpoint right."""
    from shufflenet.engine import test as evaluate
    from shufflenet.weights import load_checkpoint

    config, data = tiny
    work = tmp_path / "run"
    assert cli("train", config, "--data", data, "--epochs", 1, "--work-dir", work, "--set", "train.even_odd_routing=true") == 0
    assert torch.load(work / "checkpoints" / "last.pt", weights_only=True)["config"]["train"]["even_odd_routing"]
    saved = load_checkpoint(work / "model.safetensors")
    assert saved.routing == "shuffle"
    results = [evaluate("shufflenet_v2_x0_5", work / name, data=str(data / "val"), workers=0, out=tmp_path / name.replace("/", "_"))
               for name in ("checkpoints/last.pt", "model.safetensors")]
    assert results[0]["top1"] == results[1]["top1"] and results[0]["loss"] == pytest.approx(results[1]["loss"], rel=1e-5)


def test_train_per_class_keeps_the_first_images_of_each_class(tiny) -> None:
    from shufflenet.engine import builders

    config, data = tiny
    train_set, val_set = builders.build_datasets(load_config(config, [f"data.root={data}", "data.train_per_class=3"]).data)
    kept = [(Path(path).parent.name, Path(path).name) for path, _ in train_set.samples]
    expected = [(c, name) for c in ("airplane", "frog") for name in sorted(p.name for p in (data / "train" / c).iterdir())[:3]]
    assert kept == expected and len(val_set) == 16
    with pytest.raises(UserError, match="at least 1"):
        builders.build_datasets(load_config(config, [f"data.root={data}", "data.train_per_class=0"]).data)


def torchvision_ra_sampler(n: int, world_size: int, rank: int, seed: int, epoch: int, repeats: int) -> list[int]:
    """torchvision's references/classification/sampler.py ``RASampler.__iter__`` (from DeiT), as it is."""
    g = torch.Generator()
    g.manual_seed(seed + epoch)
    indices = torch.randperm(n, generator=g).tolist()
    indices = [i for i in indices for _ in range(repeats)]
    num_samples = math.ceil(n * repeats / world_size)
    total_size = num_samples * world_size
    indices += indices[: total_size - len(indices)]
    indices = indices[rank:total_size:world_size]
    return indices[: math.floor(n // 256 * 256 / world_size)]


def test_repeated_augmentation_deals_torchvisions_indices_with_a_new_augmentation_per_copy() -> None:
    from shufflenet.data.datasets import ResumableSampler, sample_seed

    n, world, repeats, epoch = 1024, 4, 4, 7  # torchvision's ShuffleNet V2 x1.5/x2.0 recipe: --ra-reps 4 on 8 GPUs
    ranks = []
    for rank in range(world):
        sampler = ResumableSampler(list(range(n)), world, rank, shuffle=True, seed=5, repeats=repeats)
        sampler.set_epoch(epoch)
        ranks.append(list(sampler))
        assert [i for i, _ in ranks[-1]] == torchvision_ra_sampler(n, world, rank, 5, epoch, repeats)
        assert len(sampler) == n // world  # an epoch as long as a plain one
    steps = list(zip(*ranks))
    assert all(len({i for i, _ in step}) == 1 for step in steps)  # one image per step on every rank...
    assert all(len({s for _, s in step}) == world for step in steps)  # ...under four augmentations
    assert len({i for i, _ in ranks[0]}) == n // repeats  # a quarter of the images per epoch

    plain = ResumableSampler(list(range(n)), 1, 0, shuffle=True, seed=5)
    plain.set_epoch(epoch)
    assert all(s == sample_seed(5, epoch, i) for i, s in plain)  # repeats=1 keeps the seeds runs were trained with


def test_repeated_augmentation_puts_differently_augmented_copies_in_one_batch(tiny) -> None:
    from shufflenet.engine import builders
    from shufflenet.engine.distributed import Runtime

    config, data = tiny
    train_set, _ = builders.build_datasets(load_config(config, [f"data.root={data}"]).data)
    one = Runtime(rank=0, world_size=1, device=torch.device("cpu"))
    images, labels, *_ = next(iter(builders.train_loader(train_set, 8, one, seed=0, workers=0, repeats=4)))
    for copies, label in zip(images.view(2, 4, *images.shape[1:]), labels.view(2, 4)):
        assert len(set(label.tolist())) == 1
        assert len({c.numpy().tobytes() for c in copies}) == 4, "each copy needs its own crop and flip"
    with pytest.raises(UserError, match=re.escape("data.augment.repeats must be at least 1")):
        builders.train_loader(train_set, 8, one, seed=0, workers=0, repeats=0)


def test_on_device_augmentation_trains_and_refuses_what_it_does_not_cover(tiny, tmp_path: Path, monkeypatch, capsys) -> None:
    from shufflenet.engine import builders

    monkeypatch.setattr(builders, "CACHE_DIR", tmp_path / "cache")
    config, data = tiny
    on_device = ["--set", "data.augment.on_device=true", "--set", "data.cache_decoded=true",
                 "--set", "data.augment.auto_augment=trivial_augment_wide"]
    assert cli("train", config, "--data", data, "--epochs", 1, *on_device, "--work-dir", tmp_path / "run") == 0
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert math.isfinite(row["train_loss"]) and row["val_top1"] >= 0

    capsys.readouterr()
    assert cli("train", config, "--data", data, *on_device, "--set", "data.augment.crop=random_resized", "--work-dir", tmp_path / "no") == 2
    assert "data.augment.on_device covers crop: pad" in capsys.readouterr().err


# -- a work dir holding a run; range checks --------------------------------------------------------
RUN_FILES = ("config.yaml", "metrics.jsonl", "checkpoints/last.pt", "checkpoints/best.pt", "model.safetensors")


def test_a_fresh_run_into_a_finished_one_is_refused_unless_forced(tiny, tmp_path: Path, capsys) -> None:
    config, data = tiny
    work = tmp_path / "run"
    args = ["train", config, "--data", data, "--epochs", 1, "--work-dir", work]
    assert cli(*args) == 0
    before = {name: (work / name).read_bytes() for name in RUN_FILES}
    capsys.readouterr()
    assert cli(*args, "--set", "optim.lr=0.01") == 2
    err = capsys.readouterr().err
    assert f"{work} already holds a run's files (checkpoints/last.pt, checkpoints/best.pt, model.safetensors, config.yaml, " in err
    assert "pass --resume" in err and "--force" in err
    assert {name: (work / name).read_bytes() for name in RUN_FILES} == before

    (work / "checkpoints" / "last.pt").unlink()  # only the final weights left: --resume has nothing to continue
    assert cli(*args, "--resume") == 2
    assert "holds a run's files (checkpoints/best.pt, model.safetensors, metrics.jsonl, " in (err := capsys.readouterr().err)
    assert "it has no checkpoint to resume" in err
    assert (work / "model.safetensors").read_bytes() == before["model.safetensors"]

    assert cli(*args, "--set", "optim.lr=0.01", "--force") == 0
    assert "lr: 0.01" in (work / "config.yaml").read_text()
    assert (work / "model.safetensors").read_bytes() != before["model.safetensors"]


def test_a_setup_that_fails_leaves_no_config_behind(tiny, tmp_path: Path, capsys) -> None:
    config, _ = tiny
    work = tmp_path / "run"
    assert cli("train", config, "--data", tmp_path / "missing", "--work-dir", work) == 2
    assert "dataset not found" in capsys.readouterr().err
    assert not work.exists()


@pytest.mark.parametrize("setting", ["train.grad_accum_steps=0", "train.log_every_steps=0", "train.eval_every_epochs=0",
                                     "train.batch_size=0", "data.num_workers=-1"])
def test_counts_below_their_minimum_are_refused_with_the_key(tiny, tmp_path: Path, capsys, setting: str) -> None:
    config, data = tiny
    key, value = setting.split("=")
    assert cli("train", config, "--data", data, "--set", setting, "--work-dir", tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert f"config key {key}: must be at least {int(value) + 1}, got {value}" in err and "Traceback" not in err


@pytest.mark.parametrize("flags", [["train", "CONFIG", "--batch-size", "0"], ["test", "MODEL", "CKPT", "--batch-size", "0"],
                                   ["test", "MODEL", "CKPT", "--workers", "-1"]])
def test_count_flags_below_their_minimum_are_usage_errors(flags: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli(*flags)
    assert exit_info.value.code == 2
    assert f"{flags[-2]}: must be at least {int(flags[-1]) + 1}, got {flags[-1]}" in capsys.readouterr().err


# -- labels by class name ------------------------------------------------------------------------------
def always_frog(tmp_path: Path) -> Path:
    """A model of the classes (airplane, cat, frog) that answers frog (index 2) for every image."""
    from shufflenet import get_model
    from shufflenet.data.preprocess import Preprocessing
    from shufflenet.weights import save_checkpoint

    model = get_model("shufflenet_v2_x0_5", num_classes=3)
    model.head.fc.weight.data.zero_()
    model.head.fc.bias.data = torch.tensor([0.0, 0.0, 10.0])
    model.class_names = ("airplane", "cat", "frog")
    model.preprocessing = Preprocessing(resize_size=32, crop_size=32)
    return save_checkpoint(model, tmp_path / "frog.safetensors")


def test_test_scores_a_folder_with_some_of_the_models_classes_by_name(tmp_path: Path) -> None:
    """No cat/ folder: frog/ is the folder's class 1, the model's class 2. Scored by folder index,
    every frog image would count as a miss of "cat"."""
    from shufflenet.engine import test as evaluate

    data = make_folder(tmp_path / "data", ("airplane", "frog"), 0, 3)
    result = evaluate("shufflenet_v2_x0_5", always_frog(tmp_path), data=str(data), workers=0, out=tmp_path)
    assert result["class_names"] == ["airplane", "frog"]
    assert result["per_class"] == [0.0, 100.0] and result["top1"] == 50.0
    assert result["confusion"] == [[0, 3], [0, 3]]  # rows: true, columns: predicted, both by name


def test_test_scores_a_weights_file_given_as_the_model_and_writes_beside_it(tmp_path: Path) -> None:
    """`shufflenet test RUN/model.safetensors`: the confusion matrix went to runs/test/SOURCE, which for
    an absolute path is the file itself, and the run failed after scoring (session 31)."""
    from shufflenet.engine import test as evaluate

    data = make_folder(tmp_path / "data", ("airplane", "frog"), 0, 2)
    weights = always_frog(tmp_path).resolve()
    result = evaluate(str(weights), data=str(data), workers=0)
    assert result["top1"] == 50.0 and result["confusion_png"] == str(weights.parent / "confusion.png")
    assert (weights.parent / "confusion.png").is_file()


def test_test_names_the_folders_the_model_has_no_class_for(tmp_path: Path) -> None:
    from shufflenet.engine import test as evaluate

    data = make_folder(tmp_path / "data", ("airplane", "frog", "ship"), 0, 1)
    with pytest.raises(UserError, match=re.escape("1 class(es) not among the model's 3 classes (airplane, cat, frog): ship")):
        evaluate("shufflenet_v2_x0_5", always_frog(tmp_path), data=str(data), workers=0, out=tmp_path)


def test_the_validation_labels_are_the_training_classes_indices(tmp_path: Path) -> None:
    from shufflenet.engine import builders

    root = make_folder(tmp_path / "data", ("airplane", "cat", "frog"), 1, 1)
    shutil.rmtree(root / "val" / "cat")
    config = load_config(None, [f"data.root={root}"])
    train_set, val_set = builders.build_datasets(config.data)
    assert val_set.classes == train_set.classes == ["airplane", "cat", "frog"]
    assert [(Path(path).parent.name, label) for path, label in val_set.samples] == [("airplane", 0), ("frog", 2)]

    make_folder(tmp_path / "ship", ("ship",), 0, 1)
    shutil.move(tmp_path / "ship" / "val" / "ship", root / "val")
    with pytest.raises(UserError, match=re.escape("not among the training data's 3 classes (airplane, cat, frog): ship")):
        builders.build_datasets(config.data)


# -- training checkpoints as weights: the EMA's -------------------------------------------------------
def test_a_training_checkpoint_is_read_as_its_ema_weights_by_test_predict_and_convert(tiny, tmp_path: Path, capsys) -> None:
    """best.pt was chosen by the EMA's accuracy and model.safetensors holds the EMA: `test`, and every
    loader of weights files (predict, convert, --pretrained), read a training state as those weights,
    in torchvision's channel order when the run trained in the even/odd twin."""
    from shufflenet.engine import test as evaluate
    from shufflenet.weights import load_checkpoint

    config, data = tiny
    work = tmp_path / "run"
    assert cli("train", config, "--data", data, "--epochs", 1, "--work-dir", work, "--set", "train.ema_decay=0.9",
               "--set", "train.even_odd_routing=true") == 0
    best, final = work / "checkpoints" / "best.pt", work / "model.safetensors"
    results = [evaluate("shufflenet_v2_x0_5", path, data=str(data / "val"), workers=0, out=tmp_path) for path in (best, final)]
    assert results[0]["weights"] == "ema" and results[0]["loss"] == pytest.approx(results[1]["loss"], rel=1e-6)

    loaded = load_checkpoint(best)
    assert loaded.routing == "shuffle" and loaded.source == {"format": "shufflenet train", "file": "best.pt", "weights": "ema"}
    assert loaded.class_names == ("airplane", "frog") and loaded.preprocessing.crop_size == 32
    assert_same_weights(loaded.state_dict(), load_checkpoint(final).state_dict(), atol=0)

    capsys.readouterr()
    assert cli("convert", best, "-o", tmp_path / "best.safetensors") == 0
    assert "(shufflenet train)" in capsys.readouterr().out
    assert cli("test", "shufflenet_v2_x0_5", best, "--data", data, "--workers", 0, "--out", tmp_path) == 0
    assert "shufflenet_v2_x0_5 (EMA weights): top-1" in capsys.readouterr().out
    assert cli("test", "shufflenet_v1_g3_x0_5", best, "--data", data, "--workers", 0, "--out", tmp_path) == 2
    assert "is a training state of shufflenet_v2_x0_5, not of shufflenet_v1_g3_x0_5" in capsys.readouterr().err
    state = torch.load(best, weights_only=True)
    del state["config"]
    torch.save(state, tmp_path / "no_config.pt")
    for command in (["convert", tmp_path / "no_config.pt", "-o", tmp_path / "x.safetensors"], ["predict", tmp_path / "no_config.pt", data]):
        assert cli(*command) == 2
        assert "not a training-state checkpoint of `shufflenet train` (no config)" in capsys.readouterr().err
    state = torch.load(best, weights_only=True)
    del state["ema"]["module.stem.conv.weight"]  # hand-edited, or written by a version that built the model otherwise
    torch.save(state, tmp_path / "edited.pt")
    assert cli("convert", tmp_path / "edited.pt", "-o", tmp_path / "y.safetensors") == 2
    assert "its weights do not fit the model its recipe builds (Missing key(s)" in capsys.readouterr().err



def test_quantization_aware_training_writes_the_int8_file_it_evaluated(tiny, tmp_path: Path, capsys) -> None:
    config, data = tiny
    base, qat = tmp_path / "base", tmp_path / "qat"
    assert cli("train", config, "--data", data, "--epochs", 1, "--work-dir", base) == 0
    assert cli("train", config, "--data", data, "--epochs", 1, "--work-dir", qat, "--set", "train.qat=true") == 2
    assert "train.qat does not go with model.pretrained unset" in capsys.readouterr().err
    assert cli("train", config, "--data", data, "--epochs", 1, "--work-dir", qat, "--set", "train.qat=true",  # a fine-tune
               "--set", f"model.pretrained={base / 'model.safetensors'}", "--set", "optim.lr=0.001") == 0
    assert f"weights: {qat / 'model.int8.onnx'}" in capsys.readouterr().out
    assert not (qat / "model.safetensors").exists()
    scored = json.loads((qat / "summary.json").read_text())["final_top1"]
    for weights in (qat / "checkpoints" / "best.pt", qat / "model.int8.onnx"):  # the simulation, then ONNX Runtime's INT8
        assert cli("test", "shufflenet_v2_x0_5", weights, "--data", data, "--workers", 0, "--out", tmp_path, "--json") == 0
        top1 = json.loads(capsys.readouterr().out)["top1"]
        assert abs(top1 - scored) <= 100 / 16 + 1e-9  # ONNX Runtime's integer arithmetic may flip one of 16 images
    assert cli("convert", qat / "checkpoints" / "best.pt", "-o", tmp_path / "q.safetensors") == 2
    assert "save it as INT8 ONNX with `shufflenet export`" in capsys.readouterr().err
    assert cli("export", qat / "checkpoints" / "best.pt", "-o", tmp_path / "best.onnx") == 0
    assert "INT8 from quantization-aware training" in capsys.readouterr().out
    assert cli("export", qat / "checkpoints" / "best.pt", "--fp16", "-o", tmp_path / "best16.onnx") == 2
    assert "exports as INT8 as it is; drop --int8/--fp16" in capsys.readouterr().err
    assert cli("export", base / "model.safetensors", "-o", tmp_path / "base.onnx") == 0
    capsys.readouterr()
    info = {}  # `info FILE`: what each file holds, counted on the torch model or read off the ONNX graph
    for file in (base / "model.safetensors", tmp_path / "base.onnx", qat / "checkpoints" / "best.pt", qat / "model.int8.onnx"):
        assert cli("info", file, "--json") == 0
        info[file.name] = json.loads(capsys.readouterr().out)
    assert info["best.pt"]["training"].startswith("1 of 1 epochs done, 0 steps into the next; best val top-1")
    assert info["best.pt"]["quantization"] and info["model.int8.onnx"]["quantization"].endswith(" aware-training")
    folded = info["best.pt"]["params"]  # BN folded into the convs
    assert info["base.onnx"]["params"] == info["model.int8.onnx"]["params"] == folded < info["model.safetensors"]["params"]
    assert info["model.int8.onnx"]["input"] == "input [batch, 3, 32, 32]"
    assert info["model.safetensors"]["class_names"] == info["model.int8.onnx"]["class_names"] == ["airplane", "frog"]
    assert cli("train", config, "--data", data, "--epochs", 2, "--work-dir", base, "--resume", "--set", "train.qat=true",
               "--set", f"model.pretrained={base / 'model.safetensors'}") == 2  # a float run does not go on as QAT
    assert "other model settings (train.qat: False -> True)" in capsys.readouterr().err
    for clash in ("model.kwargs.frozen_stages=0", "model.kwargs.routing=even_odd", "train.amp=bf16"):
        with pytest.raises(UserError, match=r"train\.qat does not go with"):
            load_config(config, ["train.qat=true", "model.pretrained=x.safetensors", clash])

def test_data_that_cannot_be_read_at_all_is_an_error_not_a_score(tiny, tmp_path: Path, capsys) -> None:
    config, data = tiny
    for image in data.rglob("*.*"):
        image.write_bytes(b"not an image")
    assert cli("train", config, "--data", data, "--epochs", 1, "--work-dir", tmp_path / "run") == 2
    assert "no training image could be read in epoch 1 (32 skipped)" in capsys.readouterr().err
    assert not (tmp_path / "run" / "model.safetensors").exists()
    weights = tmp_path / "m.safetensors"
    save_checkpoint(get_model("shufflenet_v2_x0_5", num_classes=2), weights)
    assert cli("test", "shufflenet_v2_x0_5", weights, "--data", data / "val", "--workers", 0) == 2
    assert "none of the 16 images in" in capsys.readouterr().err


# -- recipe errors ---------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["[", ": :"])
def test_a_set_value_that_is_not_yaml_is_one_line_naming_the_key(tiny, capsys, value: str) -> None:
    config, data = tiny
    assert cli("train", config, "--data", data, "--set", f"optim.lr={value}") == 2
    err = capsys.readouterr().err
    assert f"--set optim.lr: the value {value!r} is not valid YAML at line 1" in err
    assert len(err.strip().splitlines()) == 1


def test_a_recipe_that_is_not_yaml_is_one_line_with_its_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("optim:\n  lr: [0.1\n")
    with pytest.raises(UserError) as error:
        load_config(path)
    assert str(error.value).startswith(f"config {path} is not valid YAML at line 3, column 1: expected ',' or ']'")
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("base", ["5", "[tiny.yaml]"])
def test_base_must_be_one_path(tiny, base: str) -> None:
    config, _ = tiny
    recipe = config.parent / "child.yaml"
    recipe.write_text(f"_base_: {base}\n")
    with pytest.raises(UserError, match=re.escape(f"config {recipe}: _base_ must be the path of one YAML file")):
        load_config(recipe)


def test_a_recipe_that_is_an_image_or_a_directory_is_refused(tmp_path: Path) -> None:
    image = next((SUBSET / "train" / "frog").iterdir())
    with pytest.raises(UserError, match=re.escape(f"config {image}: not a YAML file (not UTF-8 text)")):
        load_config(image)
    with pytest.raises(UserError, match=re.escape(f"config {tmp_path}: cannot read it: Is a directory")):
        load_config(tmp_path)


@pytest.mark.parametrize("setting, rule", [
    ("optim.lr=0", "greater than 0"), ("optim.lr=-0.1", "greater than 0"), ("optim.momentum=-0.5", "at least 0"),
    ("optim.weight_decay=-1e-4", "at least 0"), ("optim.base_batch_size=0", "at least 1"),
    ("train.label_smoothing=1.5", "at most 1"), ("train.label_smoothing=-0.1", "at least 0"),
    ("data.augment.hflip=2", "at most 1"), ("data.augment.random_erasing=-0.5", "at least 0"),
    ("data.augment.mixup_alpha=-1", "at least 0"), ("data.augment.cutmix_alpha=-0.2", "at least 0"),
])
def test_numbers_out_of_their_range_are_refused_with_the_key(setting: str, rule: str) -> None:
    key, value = setting.split("=")
    got = float(value) if key != "optim.base_batch_size" else int(value)
    with pytest.raises(UserError, match=re.escape(f"config key {key}: must be {rule}, got {got!r}")):
        load_config(None, [setting])


def test_a_negative_lr_flag_and_nesterov_without_momentum_are_refused(tiny, tmp_path: Path, capsys) -> None:
    config, data = tiny
    assert cli("train", config, "--data", data, "--lr", "-0.1", "--work-dir", tmp_path / "run") == 2
    assert "config key optim.lr: must be greater than 0, got -0.1" in capsys.readouterr().err
    with pytest.raises(UserError, match=re.escape("config key optim.nesterov: true needs optim.momentum greater than 0")):
        load_config(None, ["optim.nesterov=true", "optim.momentum=0"])
    assert load_config(None, ["optim.name=adamw", "optim.nesterov=true", "optim.momentum=0"]).optim.name == "adamw"


def test_an_augmentation_that_cannot_apply_is_refused_before_training(tiny, tmp_path: Path, monkeypatch) -> None:
    from shufflenet.engine import builders

    monkeypatch.setattr(builders, "CACHE_DIR", tmp_path / "cache")
    config, data = tiny
    for cache in ("true", "false"):
        recipe = load_config(config, [f"data.root={data}", f"data.cache_decoded={cache}", "data.augment.crop_size=64"])
        with pytest.raises(UserError, match=r"the training augmentation fails on .*airplane.*: Required crop size \(64, 64\) is larger"):
            builders.build_datasets(recipe.data)
