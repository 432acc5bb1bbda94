"""The papers' claims at CIFAR-10 scale: train the ablation grid, then write docs/results.md.

    python tools/ablations.py --data /path/to/cifar10 --runs-dir runs/ablations          # train what is missing
    python tools/ablations.py --data /path/to/cifar10 --runs-dir runs/ablations --report # tables only
    python tools/ablations.py --data ... --per-class 1000 --epochs 15                     # a 10,000-image scale
    python tools/ablations.py --data ... --models '*x0_5*'                                 # only the 0.5x variants
    python tools/ablations.py --data ... --set data.num_workers=6 --set train.device=cuda  # on a GPU machine

On two CPU cores the full grid (10 models, 3 seeds, 30 epochs of 50,000 images) takes days, so
``--per-class`` trains on the first N images of each class (``data.train_per_class``); the report
states the scale, and the val set is always the full 5,000 images. Each table also gives the
model's batch-1 CPU latency at 32 px on the fast path (``shufflenet.deploy.bench``, 1 thread).

Every run is ``shufflenet train configs/cifar10/ablation.yaml`` with the model, its options and the
seed overridden, in its own work dir, started with ``--resume``: re-running the command after an
interruption (or in the next session) continues where it stopped, and finished runs are skipped.
Each finished run's result is appended to ``docs/ablation_runs.jsonl``, which is committed: the tables
are made from it, so they survive the loss of the run folders (a new machine) and can be checked.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "configs" / "cifar10" / "ablation.yaml"
RECORD = REPO / "docs" / "ablation_runs.jsonl"


@dataclass(frozen=True)
class Variant:
    model: str
    options: tuple[tuple[str, str], ...] = ()  # architecture kwargs, e.g. (("shuffle", "none"),)
    label: str = ""

    @property
    def slug(self) -> str:
        return self.model + "".join(f"-{k}_{v}" for k, v in self.options)

    @property
    def name(self) -> str:
        return self.label or self.model


@dataclass
class Experiment:
    title: str
    claim: str  # the paper's ordering, in words
    variants: list[Variant] = field(default_factory=list)
    better: list[tuple[int, int]] = field(default_factory=list)  # (i, j): the paper has variant i beat variant j
    paper_error: dict[str, float] = field(default_factory=dict)  # ImageNet top-1 error of each variant


NO_SHUFFLE = (("shuffle", "none"),)
EXPERIMENTS = [
    Experiment(
        "Group count at equal complexity (V1 0.5x; paper Table 2)",
        "g8 >= g3 > g1: more groups, wider feature maps, better accuracy",
        [Variant("shufflenet_v1_g1_x0_5"), Variant("shufflenet_v1_g3_x0_5"), Variant("shufflenet_v1_g8_x0_5")],
        [(2, 1), (1, 0)],
        {"shufflenet_v1_g1_x0_5": 45.1, "shufflenet_v1_g3_x0_5": 43.2, "shufflenet_v1_g8_x0_5": 42.3},
    ),
    Experiment(
        "Channel shuffle on vs off (V1 0.5x; paper Table 3)",
        "with shuffle > without, for g3 and g8",
        [Variant("shufflenet_v1_g3_x0_5"), Variant("shufflenet_v1_g3_x0_5", NO_SHUFFLE, "shufflenet_v1_g3_x0_5 no shuffle"),
         Variant("shufflenet_v1_g8_x0_5"), Variant("shufflenet_v1_g8_x0_5", NO_SHUFFLE, "shufflenet_v1_g8_x0_5 no shuffle")],
        [(0, 1), (2, 3)],
        {"shufflenet_v1_g3_x0_5": 43.2, "shufflenet_v1_g8_x0_5": 42.3},
    ),
    Experiment(
        "V1 vs V2 at similar complexity (paper V2 Table 8)",
        "V2 > V1 at 0.5x (41 vs 38 MFLOPs) and at 1x (146 vs 140)",
        [Variant("shufflenet_v1_g3_x0_5"), Variant("shufflenet_v2_x0_5"),
         Variant("shufflenet_v1_g3_x1_0"), Variant("shufflenet_v2_x1_0")],
        [(1, 0), (3, 2)],
        {"shufflenet_v1_g3_x0_5": 43.2, "shufflenet_v2_x0_5": 39.7, "shufflenet_v1_g3_x1_0": 32.6, "shufflenet_v2_x1_0": 30.6},
    ),
    Experiment(
        "Accuracy against width (V2)",
        "wider is more accurate: 2.0x > 1.5x > 1.0x > 0.5x",
        [Variant(f"shufflenet_v2_x{w}") for w in ("2_0", "1_5", "1_0", "0_5")],
        [(0, 1), (1, 2), (2, 3)],
        {"shufflenet_v2_x0_5": 39.7, "shufflenet_v2_x1_0": 30.6, "shufflenet_v2_x1_5": 27.4, "shufflenet_v2_x2_0": 25.1},
    ),
]

VARIANTS = list({v.slug: v for e in EXPERIMENTS for v in e.variants}.values())  # each once, in table order


def run_dir(args: argparse.Namespace, variant: Variant, seed: int) -> Path:
    """One folder per run and scale, so runs at another scale never mix into a table."""
    return args.runs_dir / f"{variant.slug}-e{args.epochs}-n{args.per_class or 'all'}-seed{seed}"


def cpu_latency_ms(variant: Variant) -> float:
    """Median batch-1 latency of the CIFAR-shaped model (small_input, 10 classes, 32 px) on the
    fast path, one thread: what the accuracy costs at deployment."""
    from shufflenet import get_model
    from shufflenet.data.preprocess import Preprocessing
    from shufflenet.deploy.bench import benchmark

    model = get_model(variant.model, num_classes=10, small_input=True, **dict(variant.options))
    model.preprocessing = Preprocessing(crop_size=32, resize_size=32)
    return benchmark(model, ("fast",), (1,), device="cpu", threads=1, iters=200)[0]["median_ms"]


def read_record() -> dict[tuple, dict]:
    """The finished runs, by (variant slug, epochs, images per class or None, seed)."""
    rows = [json.loads(line) for line in RECORD.read_text().splitlines() if line.strip()] if RECORD.exists() else []
    return {(r["variant"], r["epochs"], r["per_class"], r["seed"]): r for r in rows}


def record_finished(args: argparse.Namespace, variant: Variant, seed: int) -> None:
    """Append the run's final accuracy to the record, once."""
    key = (variant.slug, args.epochs, args.per_class, seed)
    summary = run_dir(args, variant, seed) / "summary.json"
    if key in read_record() or not summary.exists():
        return
    import torch

    result = json.loads(summary.read_text())
    row = dict(zip(("variant", "epochs", "per_class", "seed"), key), val_top1=result["val_top1"], val_top5=result["val_top5"],
               torch=torch.__version__.split("+")[0])
    with RECORD.open("a") as f:
        f.write(json.dumps(row) + "\n")


def train_missing(args: argparse.Namespace) -> None:
    from shufflenet.engine import load_config, train

    variants = [v for v in VARIANTS if fnmatch(v.slug, args.models)]
    for seed in args.only_seeds or range(args.seeds):
        for variant in variants:
            record_finished(args, variant, seed)  # a run finished before the record existed
            if (variant.slug, args.epochs, args.per_class, seed) in read_record():
                continue
            work = run_dir(args, variant, seed)
            overrides = [f"model.name={variant.model}", f"train.seed={seed}", f"data.root={args.data}",
                         f"schedule.epochs={args.epochs}", f"model.kwargs={json.dumps(dict(variant.options))}",
                         f"data.train_per_class={args.per_class if args.per_class else 'null'}", *args.set]
            print(f"== {variant.name} seed {seed} -> {work}", flush=True)
            train(load_config(RECIPE, overrides), work, resume=True)
            record_finished(args, variant, seed)


def final_top1(args: argparse.Namespace, variant: Variant) -> list[float]:
    record = read_record()
    keys = [(variant.slug, args.epochs, args.per_class, seed) for seed in range(args.seeds)]
    return [record[k]["val_top1"] for k in keys if k in record]


def report(args: argparse.Namespace) -> str:
    scale = f"the first {args.per_class} training images of each class" if args.per_class else "all 50,000 training images"
    lines = [
        "## The papers' claims at CIFAR-10 scale",
        "",
        f"Each cell: CIFAR-10 val top-1 (5,000 images) at the end of `configs/cifar10/ablation.yaml`, {args.epochs} epochs",
        f"on {scale}, mean ± std over the seeds that finished (n); CPU latency: batch 1, 32 px, fast path, 1 thread.",
        f"Made by `python tools/ablations.py --data DIR --epochs {args.epochs}"
        + (f" --per-class {args.per_class}" if args.per_class else "") + " --report`.",
    ]
    for experiment in EXPERIMENTS:
        lines += ["", f"### {experiment.title}", "", f"Paper: {experiment.claim}.", "",
                  "| model | CIFAR-10 top-1 | n | CPU latency ms | paper ImageNet top-1 error |", "|---|---|---|---|---|"]
        means = []
        for variant in experiment.variants:
            accs = final_top1(args, variant)
            cell = "–" if not accs else f"{statistics.mean(accs):.2f}" + (f" ± {statistics.stdev(accs):.2f}" if len(accs) > 1 else "")
            paper = experiment.paper_error.get(variant.model) if not variant.options else None
            latency = f"{cpu_latency_ms(variant):.2f}" if accs else "–"
            lines.append(f"| {variant.name} | {cell} | {len(accs)} | {latency} | {paper if paper is not None else '–'} |")
            means.append(statistics.mean(accs) if accs else None)
        lines += ["", verdict(experiment, means)]
    return "\n".join(lines) + "\n"


def verdict(experiment: Experiment, means: list[float | None]) -> str:
    """One line per ordering the paper claims: does it hold here, and by how much."""
    lines = []
    for i, j in experiment.better:
        a, b = experiment.variants[i].name, experiment.variants[j].name
        if means[i] is None or means[j] is None:
            lines.append(f"- {a} > {b}: not measured yet.")
        else:
            gap = means[i] - means[j]
            lines.append(f"- {a} > {b}: **{'holds' if gap > 0 else 'does not hold'}** ({gap:+.2f} points).")
    return "\n".join(lines)


BEGIN, END = "<!-- ablations: generated by tools/ablations.py -->", "<!-- ablations: end -->"


def write_section(path: Path, section: str) -> None:
    """Replace the generated section of ``path`` (between the markers), keeping the hand-written rest."""
    text = path.read_text() if path.exists() else ""
    block = f"{BEGIN}\n{section}{END}\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1].lstrip("\n")
    else:
        text = text + ("\n" if text else "") + block
    path.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="CIFAR-10 folder holding train/ and val/")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/ablations"))
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per variant")
    parser.add_argument("--only-seeds", type=lambda s: [int(x) for x in s.split(",")], metavar="I,J",
                        help="train only these seeds (the tables still use 0..N-1)")
    parser.add_argument("--per-class", type=int, help="train on the first N images of each class (default: all)")
    parser.add_argument("--models", default="*", help="train only the variants whose slug matches this glob, e.g. '*x0_5*'")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="any other recipe key for every run, e.g. --set data.num_workers=6 (repeatable)")
    parser.add_argument("--report", action="store_true", help="only write the tables from finished runs")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "results.md")
    args = parser.parse_args()
    from shufflenet.errors import UserError

    try:
        if not args.report:
            train_missing(args)
        for variant in VARIANTS:  # runs made elsewhere (a GPU machine) join the record too
            for seed in range(args.seeds):
                record_finished(args, variant, seed)
        write_section(args.out, report(args))
    except UserError as error:
        print(f"ablations: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
