"""Pretrained weights by tag (timm style ``name.tag``), downloaded once into a local cache.

Every tag names its official URL, how its hash is checked, its published accuracy and the
preprocessing it was evaluated with. Downloads go to ``$SHUFFLENET_HOME/weights`` (default
``~/.cache/shufflenet/weights``); once a file is there no network is needed. A hash is verified
only where the publisher documents the file-name suffix as a sha256 prefix (torchvision,
mmpretrain); mindcv, MegEngine and chenyaofo/pytorch-cifar-models suffixes are of an undocumented
kind and are not checked, and PaddleClas names carry none.
Megvii publishes its files only through OneDrive/BaiduYun folders, so those tags are "manual":
the error message says where to put the downloaded file. Most download tags are ImageNet-1k; a
tag of another dataset (chenyaofo's CIFAR-10/100 weights) names it and the architecture options its
weights need (``small_input``, the class count), which the zoo's file cannot say.

Bundled tags (weights trained here, e.g. ``shufflenet_v2_x1_0.cifar10``) ship inside the package
as ``weights/bundled/<model>.<tag>.safetensors`` in our checkpoint format: a file there *is* the
tag, described by its own metadata (accuracy, dataset, preprocessing, class names, architecture
options), and it is never downloaded. ``tools/bundle_weights.py`` makes such a file from a
finished training run.
"""

from __future__ import annotations

import datetime
import fnmatch
import functools
import hashlib
import json
import logging
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn
from tqdm import tqdm

from ..data.preprocess import CIFAR10_MEAN, IMAGENET, IMAGENET_RESIZE_232, MEGVII, Preprocessing
from ..errors import UnknownModelError, UserError
from ..models.registry import ModelSpec, get_spec
from .checkpoint import load_checkpoint, save_checkpoint
from .formats import FORMATS, MEGENGINE, CheckpointError

logger = logging.getLogger(__name__)
DOWNLOAD_TIMEOUT_S = 15
MEGVII_FOLDER = "https://1drv.ms/f/s!AgaP37NGYuEXhRfQxHRseR7eSxXo"  # BaiduYun mirror: pan.baidu.com/s/1EUQVoFPb74yZm0JWHKjFOw (code mc24)
BUNDLED_DIR = Path(__file__).parent / "bundled"  # tests point this at a temporary folder
BUNDLED_URL = "bundled"
BUNDLED_KEYS = ("shufflenet.format", "architecture", "model_kwargs", "preprocessing", "top1", "top5", "dataset")
# chenyaofo/pytorch-cifar-models' evaluation transform: the 32x32 images as they are (no resize or crop),
# ToTensor, Normalize with the mean/std its training logs record (branch `logs`). CIFAR-10's std is the
# widespread (0.2023, 0.1994, 0.2010), not the dataset's true one that our own CIFAR-10 recipes use.
CHENYAOFO_CIFAR10 = Preprocessing(crop_size=32, resize_size=32, mean=CIFAR10_MEAN, std=(0.2023, 0.1994, 0.2010))
CHENYAOFO_CIFAR100 = Preprocessing(crop_size=32, resize_size=32, mean=(0.507, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2761))


@dataclass(frozen=True)
class PretrainedTag:
    model: str
    tag: str
    source_format: str  # a key of formats.FORMATS
    url: str
    top1: float
    top5: float
    preprocessing: Preprocessing = IMAGENET
    sha256_prefix: str | None = None  # checked after download; None where no sha256 is published
    manual: bool = False  # no direct link: the user downloads the file by hand
    filename: str = field(default="")
    dataset: str = "ImageNet-1k"  # also picks a download tag's class names (categories.dataset_classes)
    path: Path | None = None  # bundled: the file inside the package
    # architecture options beyond the format's variant (CIFAR weights: small_input, num_classes); bundled: stored in the file
    model_kwargs: dict[str, Any] = field(default_factory=dict, hash=False)

    @property
    def full_name(self) -> str:
        return f"{self.model}.{self.tag}"

    @property
    def cache_name(self) -> str:
        return self.filename or self.url.rsplit("/", 1)[-1]


def _tags() -> list[PretrainedTag]:
    tv = "https://download.pytorch.org/models/"
    mm = "https://download.openmmlab.com/mmclassification/v0/"
    mc = "https://download.mindspore.cn/toolkits/mindcv/shufflenet/"
    me = "https://data.megengine.org.cn/models/weights/"
    tags = [
        PretrainedTag("shufflenet_v2_x0_5", "tv_in1k", "torchvision", tv + "shufflenetv2_x0.5-f707e7126e.pth",
                      60.552, 81.746, IMAGENET, "f707e7126e"),
        PretrainedTag("shufflenet_v2_x1_0", "tv_in1k", "torchvision", tv + "shufflenetv2_x1-5666bf0f80.pth",
                      69.362, 88.316, IMAGENET, "5666bf0f80"),
        PretrainedTag("shufflenet_v2_x1_5", "tv_in1k", "torchvision", tv + "shufflenetv2_x1_5-3c479a10.pth",
                      72.996, 91.086, IMAGENET_RESIZE_232, "3c479a10"),
        PretrainedTag("shufflenet_v2_x2_0", "tv_in1k", "torchvision", tv + "shufflenetv2_x2_0-8be3c8ee.pth",
                      76.230, 93.006, IMAGENET_RESIZE_232, "8be3c8ee"),
        PretrainedTag("shufflenet_v1_g3_x1_0", "mmpretrain_in1k", "mmpretrain",
                      mm + "shufflenet_v1/shufflenet_v1_batch1024_imagenet_20200804-5d6cec73.pth",
                      68.13, 87.81, IMAGENET, "5d6cec73"),
        PretrainedTag("shufflenet_v2_x1_0", "mmpretrain_in1k", "mmpretrain",
                      mm + "shufflenet_v2/shufflenet_v2_batch1024_imagenet_20200812-5bf4721e.pth",
                      69.55, 88.92, IMAGENET, "5bf4721e"),
        PretrainedTag("shufflenet_v1_g3_x0_5", "mindcv_in1k", "mindcv",
                      mc + "shufflenetv1/shufflenet_v1_g3_05-42cfe109.ckpt", 57.05, 79.73),
        PretrainedTag("shufflenet_v1_g3_x1_0", "mindcv_in1k", "mindcv",
                      mc + "shufflenetv1/shufflenet_v1_g3_10-245f0ccf.ckpt", 67.77, 87.73),
    ]
    mindcv_v2 = {"x0_5": ("8c841061", 60.53, 82.11), "x1_0": ("0da4b7fa", 69.47, 88.88),
                 "x1_5": ("00b56131", 72.79, 90.93), "x2_0": ("ed8e698d", 75.07, 92.08)}
    megengine_v2 = {"x0_5": ("60750_c28db1a2", 60.696, 82.190), "x1_0": ("69369_daf9dba0", 69.372, 88.764),
                    "x1_5": ("72775_38ac4273", 72.806, 90.792), "x2_0": ("75115_497d4601", 75.074, 92.278)}
    for width, (suffix, top1, top5) in mindcv_v2.items():
        url = f"{mc}shufflenetv2/shufflenet_v2_{width}-{suffix}.ckpt"
        tags.append(PretrainedTag(f"shufflenet_v2_{width}", "mindcv_in1k", "mindcv", url, top1, top5))
    for width, (suffix, top1, top5) in megengine_v2.items():
        url = f"{me}snetv2_{width}_{suffix}.pkl"
        tags.append(PretrainedTag(f"shufflenet_v2_{width}", "megengine_in1k", "megengine", url, top1, top5, MEGENGINE))
    tags += _paddleclas_tags()
    tags += _megvii_tags()
    tags += _chenyaofo_tags()
    return tags


def _paddleclas_tags() -> list[PretrainedTag]:
    """PaddleClas's dygraph weights, the only public ones at 0.25x and 0.33x; accuracy from its zoo table
    (our registry's "paddleclas" references). No hash is published."""
    files = {f"shufflenet_v2_x{w}": f"ShuffleNetV2_x{w}" for w in ("0_25", "0_33", "0_5", "1_0", "1_5", "2_0")}
    files["shufflenet_v2_x1_0_swish"] = "ShuffleNetV2_swish"
    tags = []
    for name, stem in files.items():
        ref = get_spec(name).published_by("paddleclas")
        url = f"https://paddle-imagenet-models-name.bj.bcebos.com/dygraph/{stem}_pretrained.pdparams"
        tags.append(PretrainedTag(name, "paddle_in1k", "paddleclas", url, ref.top1, ref.top5))
    return tags


def _megvii_tags() -> list[PretrainedTag]:
    """Megvii's official weights: accuracy from the README (our registry's "megvii" references)."""
    names = [f"shufflenet_v1_g{g}_x{w}" for g in (3, 8) for w in ("0_5", "1_0", "1_5", "2_0")]
    names += [f"shufflenet_v2_x{w}" for w in ("0_5", "1_0", "1_5", "2_0")]
    names += [f"shufflenet_v2_plus_{size}" for size in ("small", "medium", "large")]
    tags = []
    for name in names:
        ref = get_spec(name).published_by("megvii")
        tags.append(PretrainedTag(name, "megvii_in1k", "megvii", MEGVII_FOLDER, ref.top1, ref.top5, MEGVII,
                                  manual=True, filename=f"{name}.megvii_in1k.pth.tar"))
    return tags


def _chenyaofo_tags() -> list[PretrainedTag]:
    """chenyaofo/pytorch-cifar-models: torchvision's V2 with a stride-1 stem and no max-pool (our
    ``small_input``) trained on CIFAR-10 and CIFAR-100, saved as torchvision state dicts; accuracy
    from its README (the 10,000 test images; how it was measured: docs/weights.md). The file-name
    suffix is not documented as a sha256 prefix, so it is not checked."""
    url = "https://github.com/chenyaofo/pytorch-cifar-models/releases/download/shufflenetv2/"
    datasets = {  # tag suffix -> (dataset, classes, preprocessing, {width: (file suffix, top-1, top-5)})
        "cifar10": ("CIFAR-10", 10, CHENYAOFO_CIFAR10, {
            "x0_5": ("1308b4e9", 90.13, 99.70), "x1_0": ("98807be3", 92.98, 99.73),
            "x1_5": ("296694dd", 93.55, 99.77), "x2_0": ("ec31611c", 93.81, 99.79)}),
        "cifar100": ("CIFAR-100", 100, CHENYAOFO_CIFAR100, {
            "x0_5": ("1977720f", 67.82, 89.93), "x1_0": ("9ae22beb", 72.39, 91.46),
            "x1_5": ("e2c85ad8", 73.91, 92.13), "x2_0": ("e7e584cd", 75.35, 92.62)}),
    }
    tags = []
    for key, (dataset, classes, preprocessing, table) in datasets.items():
        for width, (suffix, top1, top5) in table.items():
            tags.append(PretrainedTag(f"shufflenet_v2_{width}", f"chenyaofo_{key}", "torchvision",
                                      f"{url}{key}_shufflenetv2_{width}-{suffix}.pt", top1, top5, preprocessing,
                                      dataset=dataset, model_kwargs={"small_input": True, "num_classes": classes}))
    return tags


TAGS: dict[str, dict[str, PretrainedTag]] = {}  # the download tags
for _t in _tags():  # the first tag of a model is its default
    TAGS.setdefault(_t.model, {})[_t.tag] = _t


# -- bundled tags: discovered from the files shipped in BUNDLED_DIR --------------------------------
def bundled_tags() -> list[PretrainedTag]:
    """One tag per readable ``<model>.<tag>.safetensors`` in ``BUNDLED_DIR``; broken files are skipped."""
    files = sorted(BUNDLED_DIR.glob("*.safetensors"))
    return list(_read_bundled(tuple((str(p), p.stat().st_mtime_ns) for p in files)))


@functools.lru_cache(maxsize=4)  # keyed on (path, mtime): each file's header is read, and warned about, once
def _read_bundled(files: tuple[tuple[str, int], ...]) -> tuple[PretrainedTag, ...]:
    tags = []
    for path, _ in files:
        try:
            tags.append(read_bundled_tag(Path(path)))
        except UserError as error:  # one bad file must not take `shufflenet list` down
            logger.warning("skipped: %s", error)
    return tuple(tags)


def read_bundled_tag(path: Path) -> PretrainedTag:
    """The tag a bundled file defines, from its name and its metadata (the header only, no tensors)."""
    model, _, tag = path.name.removesuffix(".safetensors").partition(".")
    origin = f"bundled weights {path.name}"
    check_bundled_name(model, tag, origin)
    meta = _header_metadata(path, origin)
    missing = [key for key in BUNDLED_KEYS if key not in meta]
    if missing:
        raise CheckpointError(f"{origin}: metadata lacks {', '.join(missing)} (make the file with tools/bundle_weights.py)")
    if meta["architecture"] != model:
        raise CheckpointError(f"{origin}: holds {meta['architecture']} weights, not {model}")
    try:
        return PretrainedTag(
            model, tag, "ours", BUNDLED_URL, float(meta["top1"]), float(meta["top5"]),
            Preprocessing.from_dict(json.loads(meta["preprocessing"])),
            dataset=meta["dataset"], path=path, model_kwargs=dict(json.loads(meta["model_kwargs"])),
        )
    except (ValueError, TypeError) as error:
        raise CheckpointError(f"{origin}: malformed metadata ({error})") from None


def check_bundled_name(model: str, tag: str, origin: str) -> None:
    """A bundled tag names a registered model and a new tag in [a-z0-9_]."""
    if not re.fullmatch(r"[a-z0-9_]+", tag):
        raise CheckpointError(f"{origin}: the file name must be <model>.<tag>.safetensors, the tag in [a-z0-9_]")
    try:
        get_spec(model)
    except UnknownModelError as error:
        raise CheckpointError(f"{origin}: {error}") from None
    if tag in TAGS.get(model, {}):
        raise CheckpointError(f"{origin}: {model}.{tag} is already a download tag")


def _header_metadata(path: Path, origin: str) -> dict[str, str]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{origin}: not a readable safetensors file ({error})") from None


# -- look-up -----------------------------------------------------------------------------------------
def all_tags() -> dict[str, dict[str, PretrainedTag]]:
    """Model -> tag -> description: the download tags first (the first is the default), then the bundled."""
    tags = {model: dict(model_tags) for model, model_tags in TAGS.items()}
    for info in bundled_tags():
        tags.setdefault(info.model, {})[info.tag] = info
    return tags


def list_pretrained(pattern: str | None = None) -> list[PretrainedTag]:
    """All tags, optionally those whose ``name`` or ``name.tag`` matches a shell-style pattern."""
    return [
        t for model_tags in all_tags().values() for t in model_tags.values()
        if pattern is None or fnmatch.fnmatchcase(t.model, pattern) or fnmatch.fnmatchcase(t.full_name, pattern)
    ]


def get_tag(model_name: str, tag: str | None = None) -> PretrainedTag:
    """The tag's description (``tag=None``: the model's default tag)."""
    available = all_tags().get(model_name, {})
    if not available:
        raise UserError(f"{model_name} has no pretrained weights; pass a checkpoint path instead")
    if tag is None:
        return next(iter(available.values()))
    if tag not in available:
        raise UnknownModelError(f"unknown tag {model_name}.{tag}; available: {', '.join(available)}")
    return available[tag]


def published_file_tag(path: str | Path) -> PretrainedTag | None:
    """The download tag whose file ``path`` is, by its file name (the URL's, as our cache and torch.hub's
    keep it); None for any other name."""
    name = Path(path).name
    return next((t for tags in TAGS.values() for t in tags.values() if t.cache_name == name), None)


def tag_model_kwargs(model_name: str, tag: str) -> dict[str, Any]:
    """Architecture options the tag's weights need, e.g. ``{"layout": "megvii"}`` or
    ``{"small_input": True, "num_classes": 10}``."""
    info = get_tag(model_name, tag)
    if info.path:  # bundled weights: every option they were saved with, their class count included
        return dict(info.model_kwargs)
    # a zoo's file: its format's variant, and what the file cannot say (a CIFAR stem, the class count)
    return {**FORMATS[info.source_format].variant_kwargs.get(get_spec(model_name).family, {}), **info.model_kwargs}


# -- cache and download ----------------------------------------------------------------------------
def cache_dir() -> Path:
    return Path(os.environ.get("SHUFFLENET_HOME", "~/.cache/shufflenet")).expanduser() / "weights"


def cached_file(info: PretrainedTag, progress: bool = True) -> Path:
    """The tag's file: bundled in the package, or in the cache (downloaded first if needed)."""
    if info.path:
        return info.path
    path = cache_dir() / info.cache_name
    if path.is_file():
        return path
    if info.manual:
        raise UserError(
            f"{info.full_name}: Megvii publishes these weights only in a shared folder ({info.url}); "
            f"download the file by hand and put it at {path}"
        )
    download(info.url, path, info.sha256_prefix, progress)
    return path


def _open_url(url: str):
    request = urllib.request.Request(url, headers={"User-Agent": "shufflenet"})
    return urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S)


def download(url: str, dest: Path, sha256_prefix: str | None = None, progress: bool = True) -> Path:
    """Stream ``url`` to ``dest`` through a ``.part`` file; never leaves a partial or corrupt file."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".part")
    digest = hashlib.sha256()
    try:
        with _open_url(url) as response, partial.open("wb") as out:
            total = int(getattr(response, "headers", {}).get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, disable=not progress) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
        if total and partial.stat().st_size != total:
            raise UserError(f"download of {url} stopped after {partial.stat().st_size} of {total} bytes; retry")
        if sha256_prefix and not digest.hexdigest().startswith(sha256_prefix):
            raise UserError(
                f"{url}: sha256 {digest.hexdigest()[:16]}... does not start with the published {sha256_prefix}; "
                "the corrupt download was deleted"
            )
        os.replace(partial, dest)
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", None) or error
        raise UserError(
            f"cannot download {url} ({reason}); without network, download it by hand and put it at {dest}"
        ) from None
    finally:
        partial.unlink(missing_ok=True)
    return dest


# -- building models with weights ------------------------------------------------------------------
def fit_classifier(model: nn.Module, num_classes: int | None) -> nn.Module:
    """Keep the backbone; re-initialise the classifier when ``num_classes`` differs."""
    current = model.head.fc.out_features
    if num_classes is not None and num_classes != current:
        model.reset_classifier(num_classes)
        model.class_names = None
        logger.info("%s: classifier re-initialised for %d classes (weights had %d)",
                    getattr(model, "model_name", "model"), num_classes, current)
    return model


def build_pretrained(
    spec: ModelSpec, tag: str | None, pretrained: bool | str | os.PathLike, num_classes: int | None, **kwargs: Any
) -> nn.Module:
    """``spec`` with weights: ``pretrained`` is True (``tag`` or the default tag), a tag, the model's
    ``name`` (its default tag) or ``name.tag``, or a file path."""
    pretrained = _named_tag(spec, pretrained)
    if isinstance(pretrained, (str, os.PathLike)) and str(pretrained) not in all_tags().get(spec.name, {}):
        model = load_checkpoint(pretrained, spec=spec, **kwargs)
    else:
        info = get_tag(spec.name, pretrained if isinstance(pretrained, str) else tag)
        # a zoo's file in the cache bears the tag's file name, so it loads with the tag's options, classes
        # and preprocessing (a file of another class count then fails to fit); a bundled file has them inside
        model = load_checkpoint(cached_file(info), info.source_format, spec=spec, **kwargs)
        model.source = {"format": info.source_format, "tag": info.full_name, "url": info.url}
    model.model_name = spec.name
    return fit_classifier(model, num_classes).eval()


def _named_tag(spec: ModelSpec, pretrained: bool | str | os.PathLike) -> bool | str | os.PathLike:
    """``name`` -> True and ``name.tag`` -> ``tag`` for this model's own name, unless a file has that name."""
    if not isinstance(pretrained, str) or os.path.exists(pretrained):
        return pretrained
    if pretrained == spec.name:
        return True
    if pretrained.startswith(spec.name + "."):
        return get_tag(spec.name, pretrained[len(spec.name) + 1 :]).tag  # an unknown tag lists the known ones
    return pretrained


# -- making a bundled tag from a finished training run ---------------------------------------------
def bundle_run(
    run_dir: str | Path,
    tag: str,
    command: str,
    out_dir: str | Path | None = None,
    data: str | None = None,
    dataset: str = "CIFAR-10",
    force: bool = False,
) -> PretrainedTag:
    """Write ``<model>.<tag>.safetensors`` (default: into ``BUNDLED_DIR``) from the final weights of
    a ``shufflenet train`` work dir, with the accuracy measured on the run's validation set (its
    ``summary.json``, or re-evaluated on ``data``), the recipe, the epochs, the command and the date."""
    run_dir = Path(run_dir)
    weights, config, summary = (run_dir / name for name in ("model.safetensors", "config.yaml", "summary.json"))
    missing = [p.name for p in (weights, config, summary) if not p.is_file()]
    if missing:
        raise UserError(f"{run_dir} is not a finished training run: it has no {', '.join(missing)}")
    model = load_checkpoint(weights)
    dest = Path(out_dir or BUNDLED_DIR) / f"{model.model_name}.{tag}.safetensors"
    check_bundled_name(model.model_name, tag, f"tag {tag!r}")
    if dest.exists() and not force:
        raise UserError(f"{dest} exists; pass --force to replace it")
    try:
        run_summary = json.loads(summary.read_text())
    except ValueError as error:
        raise UserError(f"{summary}: not valid JSON ({error})") from None
    top1, top5 = evaluated_accuracy(config, weights, data) if data else final_accuracy(run_summary)
    model.source = {"format": "ours", "tag": f"{model.model_name}.{tag}", "run": run_dir.name}
    trained = datetime.datetime.fromtimestamp(weights.stat().st_mtime, datetime.timezone.utc)
    save_checkpoint(model, dest, {
        "top1": f"{top1:.2f}", "top5": f"{top5:.2f}", "dataset": dataset, "recipe": config.read_text(),
        "epochs": str(run_summary["epochs"]), "command": command, "trained": trained.date().isoformat(),
    })
    return read_bundled_tag(dest)


def final_accuracy(summary: dict) -> tuple[float, float]:
    """(top-1, top-5) of the weights a run saved in ``model.safetensors`` (the last epoch's weights,
    their EMA or their BN-recalibrated copy), from its ``summary.json``."""
    if "final_top1" not in summary:  # runs by older versions did not record it
        raise UserError("summary.json holds no accuracy of the saved weights; re-evaluate with --data DIR")
    return summary["final_top1"], summary["final_top5"]


def evaluated_accuracy(config: Path, weights: Path, data: str) -> tuple[float, float]:
    """(top-1, top-5) of ``weights`` on the labelled folder ``data`` (``shufflenet test``'s evaluation)."""
    from ..engine.tester import test

    result = test(str(config), weights, data=data, out=weights.parent)
    return result["top1"], result["top5"]
