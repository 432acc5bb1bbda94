"""``shufflenet list`` and ``shufflenet info``: the zoo, with our counts beside the published ones, and
what a checkpoint or ONNX file holds."""

from __future__ import annotations

import argparse
import json

from ..complexity import complexity
from ..errors import UserError
from ..models.registry import get_model, get_spec, list_models, split_name
from ..weights import is_checkpoint_path, load_model
from ..weights.categories import dataset_classes
from ..weights.checkpoint import variant_kwargs
from ..weights.hub import get_tag, list_pretrained
from .table import format_table


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("list", help="list model names", description="List the registered model names.")
    p.add_argument("pattern", nargs="?", help="shell-style filter, e.g. 'shufflenet_v1_g3*'")
    p.add_argument("--pretrained", action="store_true", help="list pretrained weights as name.tag with top-1")
    p.set_defaults(func=run_list)

    p = subparsers.add_parser(
        "info",
        help="parameters and multiply-adds beside the published numbers",
        description="Count parameters and multiply-adds (the papers' FLOPs) and compare with the published values; "
                    "for a checkpoint or ONNX file, show the model it holds, its classes, preprocessing and origin.",
    )
    p.add_argument("models", nargs="*", metavar="MODEL",
                   help="names, name.tag (the tag's weights, not fetched), patterns or files (default: every model)")
    p.add_argument("--input-size", type=int, help="square input size in pixels (default 224; a file's own crop size)")
    p.add_argument("--json", action="store_true", help="one JSON object per model instead of a table")
    p.set_defaults(func=run_info)


def run_list(args: argparse.Namespace) -> int:
    if args.pretrained:
        tags = list_pretrained(args.pattern)
        if not tags:
            raise UserError(f"no pretrained weights match {args.pattern!r}")
        print(format_table(["name.tag", "dataset", "top-1", "top-5", "source"],
                           [[t.full_name, t.dataset, f"{t.top1:g}", f"{t.top5:g}", "manual" if t.manual else t.url]
                            for t in tags]))
        return 0
    names = list_models(args.pattern)
    if not names:
        raise UserError(f"no model matches {args.pattern!r}")
    print("\n".join(names))
    return 0


def model_info(name: str, input_size: int = 224) -> dict:
    """Our parameter and MAC counts beside the reference values of one registered model."""
    spec = get_spec(name)
    model = spec.build()
    ours = complexity(model, input_size)
    return {
        "model": spec.name,
        "family": spec.family,
        "params": ours.params,
        "macs": ours.macs,
        "input_size": input_size,
        "reference": {q: dict(zip(("value", "source"), r)) for q in ("params", "macs") if (r := spec.reference(q))},
        "top1": {r.source: r.top1 for r in spec.references if r.top1 is not None},
        "other_weights": {t.tag: {"dataset": t.dataset, "top1": t.top1, "top5": t.top5}
                          for t in list_pretrained(spec.name) if t.dataset != "ImageNet-1k"},
        "preprocessing": spec.preprocessing.to_dict(),
        "feature_info": model.feature_info(),
    }


def file_info(path: str, input_size: int | None = None) -> dict:
    """What a checkpoint file holds: the model and its settings, classes, counts, preprocessing, origin."""
    from ..deploy.runtimes import is_onnx_file, load_onnx

    if is_onnx_file(path):
        from ..deploy.export import describe_onnx

        return {"file": path, **describe_onnx(load_onnx(path))}
    model = load_model(path)
    return {
        "file": path,
        **_built_model(model, model.model_name, getattr(model, "class_names", None), input_size),
        "source": getattr(model, "source", None),
        "quantization": "aware training (BN folded, fake-quantized)" if hasattr(model, "qat_weight_levels") else None,
        "training": getattr(model, "training_progress", None),  # set when read from a training state
    }


def tag_info(name: str, input_size: int | None = None) -> dict:
    """What the weights of ``name.tag`` are, without fetching them: the model the tag builds (a CIFAR
    tag: small input, 10 classes), its counts at the tag's input size, its preprocessing, classes,
    published accuracy and where the file comes from."""
    spec, tag = split_name(name)
    weights = get_tag(spec.name, tag)
    model = get_model(name)  # the architecture and preprocessing the tag's weights need
    return {
        "tag": weights.full_name,
        **_built_model(model, spec.name, dataset_classes(weights.dataset), input_size),
        "weights": {"dataset": weights.dataset, "top1": weights.top1, "top5": weights.top5},
        "source": {"format": weights.source_format, "url": "inside the package" if weights.path else weights.url,
                   **({"sha256": weights.sha256_prefix} if weights.sha256_prefix else {}),
                   **({"download": "by hand"} if weights.manual else {})},
    }


def _built_model(model, name: str, class_names, input_size: int | None) -> dict:
    """A model's settings, classes, counts at ``input_size`` (default: its own crop size) and preprocessing."""
    size = input_size or model.preprocessing.crop_size
    counts = complexity(model, size)
    return {
        "model": name,
        "settings": variant_kwargs(model),
        "class_names": list(class_names) if class_names else None,
        "params": counts.params,
        "macs": counts.macs,
        "input_size": size,
        "preprocessing": model.preprocessing.to_dict(),
    }


def _file_lines(info: dict) -> str:
    """``info``'s fields, one per line, the class list shortened."""
    names = info.get("class_names")
    values = {
        "model": info["model"],
        "settings": " ".join(f"{k}={v}" for k, v in info.get("settings", {}).items()) or None,
        "classes": f"{len(names)}: {', '.join(names[:10])}{', ...' if len(names) > 10 else ''}" if names else None,
        "params": f"{info['params'] / 1e6:.3f}M" + ("" if "macs" in info else " (stored, BN folded)"),
        f"MACs@{info.get('input_size')}": f"{info['macs'] / 1e6:.1f}M" if "macs" in info else None,
        "input": info.get("input"),
        "opset": info.get("opset"),
        "quantization": info.get("quantization"),
        "preprocessing": " ".join(f"{k}={v}" for k, v in info["preprocessing"].items()),
        "source": " ".join(f"{k}={v}" for k, v in info["source"].items()) if info.get("source") else None,
        "training": info.get("training"),
        "published": "{dataset} top-1 {top1:g} top-5 {top5:g}".format(**info["weights"]) if info.get("weights") else None,
    }
    return "\n".join(f"  {key:<14} {value}" for key, value in values.items() if value is not None)


def _expand(patterns: list[str]) -> list[str]:
    if not patterns:
        return list_models()
    names: list[str] = []
    for pattern in patterns:
        found = list_models(pattern) if any(c in pattern for c in "*?[") else [_named(pattern)]
        if not found:
            raise UserError(f"no model matches {pattern!r}")
        names += [n for n in found if n not in names]
    return names


def _is_tag(name: str) -> bool:
    """``name.tag`` of a registered model (a pattern or an unknown name is not)."""
    if any(c in name for c in "*?["):
        return False
    try:
        return split_name(name)[1] is not None
    except UserError:
        return False


def _named(name: str) -> str:
    """The model of ``name`` or ``name.tag``; a tag that does not exist is an error, not ignored."""
    spec, tag = split_name(name)
    if tag:
        get_tag(spec.name, tag)
    return spec.name


def _delta(ours: int, ref: int | None) -> str | None:
    return None if not ref else f"{100 * (ours / ref - 1):+.1f}%"


def run_info(args: argparse.Namespace) -> int:
    from ..deploy.runtimes import is_onnx_file  # the deploy stack loads only when asked for

    if args.input_size is not None and args.input_size < 32:
        raise UserError(f"--input-size must be at least 32, got {args.input_size}")
    files = [m for m in args.models if is_checkpoint_path(m) or is_onnx_file(m)]  # a missing file: "does not exist"
    tags = [m for m in args.models if m not in files and _is_tag(m)]
    names = [m for m in args.models if m not in files and m not in tags]
    infos = [model_info(name, args.input_size or 224) for name in _expand(names)] if names or not (files or tags) else []
    described = [file_info(path, args.input_size) for path in files] + [tag_info(name, args.input_size) for name in tags]
    if args.json:
        for info in infos + described:
            print(json.dumps(info))
        return 0
    for info in described:
        print(f"{info.get('file') or info['tag']}\n{_file_lines(info)}\n")
    if infos:
        _print_counts(infos, args.input_size or 224)
    return 0


def _print_counts(infos: list[dict], input_size: int) -> None:
    rows = []
    for info in infos:
        params, macs = info["reference"].get("params", {}), info["reference"].get("macs", {})
        rows.append([
            info["model"],
            f"{info['params'] / 1e6:.3f}M",
            f"{params['value'] / 1e6:.3f}M ({params['source']})" if params else None,
            _delta(info["params"], params.get("value")),
            f"{info['macs'] / 1e6:.1f}M",
            f"{macs['value'] / 1e6:.1f}M ({macs['source']})" if macs else None,
            _delta(info["macs"], macs.get("value")),
            " ".join(f"{k} {v:g}" for k, v in info["top1"].items()) or None,
        ])
    headers = ["model", "params", "published", "Δ", f"MACs@{input_size}", "published", "Δ", "ImageNet top-1"]
    if any(info["other_weights"] for info in infos):  # weights trained on another dataset (CIFAR: bundled, chenyaofo's)
        headers.append("other weights: top-1")
        for row, info in zip(rows, infos):
            row.append(" ".join(f"{name} ({w['dataset']}) {w['top1']:g}" for name, w in info["other_weights"].items()) or None)
    print(format_table(headers, rows))
