"""CPU training throughput: our `shufflenet train` pipeline against a plain torchvision loop.

    python benchmarks/cpu_training.py --data /root/shufflenet-data/cifar10 --rounds 3 --steps 4

Both train ShuffleNet V2 x1.0 with the small-input stem (conv1 stride 1, no max-pool) on CIFAR-10
JPEGs at batch 256, SGD with momentum, fp32:

- peer: torchvision's model, ``ImageFolder`` + RandomCrop(32, padding=4), RandomHorizontalFlip,
  ToTensor, Normalize, ``DataLoader(batch_size=256, shuffle=True, num_workers=2)``, NCHW;
- ours: the engine's own builders on configs/cifar10/shufflenet_v2_x1_0.yaml (cached decoded
  images, its loader, normaliser, model, optimizer, channels_last, label smoothing), at batch 256.
  The recipe's TrivialAugmentWide is switched off so that both sides augment alike; ``--set KEY=VALUE``
  changes any recipe key for ours as `shufflenet train --set` does (e.g. ``train.compile=true``,
  ``data.num_workers=0``, ``data.augment.auto_augment=trivial_augment_wide``, ``data.augment.on_device=true``).

Rounds alternate (peer, ours, peer, ours...) so that machine noise hits both; each round times
``--steps`` optimizer steps after the loaders are warm. Prints a table, then the ratio of the
median images/s last.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision import transforms

from shufflenet.cli.table import format_table
from shufflenet.engine import builders
from shufflenet.engine.config import load_config
from shufflenet.engine.distributed import Runtime
from shufflenet.engine.evaluate import to_input

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "configs" / "cifar10" / "shufflenet_v2_x1_0.yaml"
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)

Step = Callable[[], int]  # one optimizer step; returns the images it trained on


def peer_step(data: Path, batch_size: int, workers: int) -> Step:
    """The plain loop most CIFAR ports write. Persistent workers, so that a small data set does
    not charge the peer a worker start-up every few steps."""
    model = torchvision.models.shufflenet_v2_x1_0(num_classes=10)
    model.conv1[0].stride = (1, 1)
    model.maxpool = nn.Identity()
    augment = transforms.Compose([
        transforms.RandomCrop(32, padding=4),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(CIFAR_MEAN, CIFAR_STD),
    ])
    dataset = torchvision.datasets.ImageFolder(str(data / "train"), augment)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                                         persistent_workers=workers > 0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    loss_fn = nn.CrossEntropyLoss()
    batches = endless(loader)
    model.train()

    def step() -> int:
        images, labels = next(batches)
        loss = loss_fn(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return len(labels)

    return step


def our_step(data: Path, batch_size: int, overrides: list[str]) -> Step:
    """What one step of `shufflenet train` runs, built by the engine's own builders."""
    config = load_config(RECIPE, [f"data.root={data}", f"train.batch_size={batch_size}", "data.augment.auto_augment=null", *overrides])
    runtime = Runtime(0, 1, torch.device("cpu"))
    augment = builders.device_augment(config.data)  # data.augment.on_device
    train_set, _ = builders.build_datasets(config.data)
    loader = builders.train_loader(train_set, batch_size, runtime, config.train.seed, config.data.num_workers)
    normalize = builders.normalizer(builders.preprocessing(config.data), runtime.device)
    model = builders.build_model(config.model, train_set.classes)
    if config.train.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = builders.build_optimizer(model, config.optim, batch_size)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.train.label_smoothing)
    forward = torch.compile(model) if config.train.compile else model
    batches = endless(loader, loader.sampler.set_position)
    model.train()

    def step() -> int:
        images, labels, seeds, _ = next(batches)
        images = augment(images, seeds) if augment is not None else images
        loss = loss_fn(forward(to_input(images, normalize, runtime.device, config.train.channels_last)), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return len(labels)

    return step


def endless(loader, start_epoch: Callable[[int], None] | None = None) -> Iterator:
    for epoch in itertools.count():
        if start_epoch is not None:
            start_epoch(epoch)
        yield from loader


def images_per_second(step: Step, steps: int) -> float:
    start, images = time.perf_counter(), 0
    for _ in range(steps):
        images += step()
    return images / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO / "demo" / "cifar10-subset", help="a folder holding train/")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per side, alternating")
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per side first")
    parser.add_argument("--peer-workers", type=int, default=2)
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's own choice)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a recipe key for ours, as `shufflenet train --set` (repeatable)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    builds = {
        "peer (torchvision loop)": lambda: peer_step(args.data, args.batch_size, args.peer_workers),
        "ours (shufflenet train)": lambda: our_step(args.data, args.batch_size, args.overrides),
    }
    sides, setup = {}, {}
    for name, build in builds.items():  # setup: building, starting the loader (and compiling, if asked)
        start = time.perf_counter()
        sides[name] = build()
        images_per_second(sides[name], args.warmup)
        setup[name] = time.perf_counter() - start
    speeds: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(args.rounds):
        for name, step in sides.items():
            speeds[name].append(images_per_second(step, args.steps))

    rows = [[name, f"{setup[name]:.0f}", f"{statistics.median(s):.1f}", f"{min(s):.1f}", f"{max(s):.1f}"]
            for name, s in speeds.items()]
    print(f"{args.data}, batch {args.batch_size}, {torch.get_num_threads()} threads, "
          f"{args.rounds} rounds x {args.steps} steps per side, ours with {args.overrides or 'the recipe as is'}")
    print(format_table(["pipeline", "setup + warm-up s", "median img/s", "min", "max"], rows))
    peer, ours = (statistics.median(s) for s in speeds.values())
    print(f"ratio ours/peer (medians): {ours / peer:.2f}x")


if __name__ == "__main__":
    main()
