"""Checkpoint formats of the other ShuffleNet zoos: reading the file and renaming it to our keys.

Each ``SourceFormat`` turns a source state dict into our key names (``to_ours``), says which
architecture variant the weights need per family (``variant_kwargs``) and how the zoo evaluated
them (``preprocessing``). Parameter values are never changed here except where the layout demands
it (MindSpore's per-group convolutions are concatenated, MegEngine's shapes are flattened, Paddle's
classifier matrix is transposed); the one
value permutation (a V1 shuffle placed after the depthwise conv) needs the built model and lives
in ``checkpoint.py``.

Files are read without ever running pickled code: ``torch.load(weights_only=True)``, safetensors,
a protobuf parser for MindSpore and an allow-list unpickler (numpy arrays only) for MegEngine and
PaddleClas (``paddle.save`` pickles a state dict as numpy arrays).
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..data.preprocess import IMAGENET, IMAGENET_RESIZE_232, MEGVII, Preprocessing
from ..errors import UserError
from .mindspore_ckpt import CheckpointFormatError, read_checkpoint

V1, V2, V2_PLUS = "ShuffleNet V1", "ShuffleNet V2", "ShuffleNet V2+"
MEGENGINE = Preprocessing(channel_order="BGR")  # ImageNet mean/std on BGR 0-255 = ours on BGR
BN_NAMES = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}


class CheckpointError(UserError):
    """A checkpoint that cannot be read or does not fit the model."""


@dataclass
class RawCheckpoint:
    """What a file holds: tensors (already unwrapped from ``{"state_dict": ...}``) and metadata."""

    tensors: dict[str, torch.Tensor]
    container: str  # "torch", "safetensors", "mindspore" or "pickle"
    metadata: dict[str, str] = field(default_factory=dict)
    training_state: dict | None = None  # the file is a `shufflenet train` checkpoint (last.pt, best.pt), held whole


# -- reading files ---------------------------------------------------------------------------------
def read_file(path: str | Path) -> RawCheckpoint:
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; give a checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    with path.open("rb") as f:
        head = f.read(16)
    if len(head) < 8:
        raise CheckpointError(f"{path} is empty or truncated")
    if head[:4] == b"PK\x03\x04":
        return _read_torch(path)
    if head[8:9] == b"{":
        return _read_safetensors(path)
    if head[:1] == b"\x80":
        return _read_pickle(path)
    if head[:1] == b"\x0a":
        return _read_mindspore(path)
    raise CheckpointError(
        f"{path}: not a PyTorch, safetensors, MindSpore, MegEngine or PaddlePaddle checkpoint (unrecognised header)"
    )


def _unwrap(obj: object, path: Path, container: str) -> RawCheckpoint:
    if isinstance(obj, dict) and "model" in obj and "position" in obj:  # its weights need the run's recipe to build
        return RawCheckpoint({}, container, training_state=obj)
    state = obj["state_dict"] if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict) else obj  # mmpretrain, Megvii
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{path}: holds no state dict (found {type(state).__name__})")
    tensors = {k: torch.as_tensor(v) for k, v in state.items() if isinstance(v, (torch.Tensor, np.ndarray))}
    if not tensors:
        raise CheckpointError(f"{path}: the state dict holds no tensors")
    return RawCheckpoint(tensors, container)


def _read_torch(path: Path) -> RawCheckpoint:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, zipfile.BadZipFile, EOFError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(
            f"{path}: cannot load as a PyTorch checkpoint with weights_only=True (truncated, or it pickles "
            f"code rather than tensors): {first_line}"
        ) from None
    return _unwrap(obj, path, "torch")


def _read_safetensors(path: Path) -> RawCheckpoint:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{path}: malformed or truncated safetensors file ({error})") from None
    return RawCheckpoint(tensors, "safetensors", metadata)


LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0a"  # pre-1.6 torch.save: protocol 2, then a 10-byte magic number


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts of numpy arrays and nothing else (MegEngine ``.pkl``, PaddlePaddle ``.pdparams``)."""

    ALLOWED = frozenset({
        ("collections", "OrderedDict"), ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    })

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}: only numpy arrays are allowed")
        return super().find_class(module, name)


def _read_pickle(path: Path) -> RawCheckpoint:
    with path.open("rb") as f:
        if f.read(4) == LEGACY_TORCH_MAGIC:
            return _read_torch(path)
    try:
        with path.open("rb") as f:
            obj = _ArrayUnpickler(f).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as error:
        raise CheckpointError(f"{path}: not a readable MegEngine/PaddlePaddle pickle of numpy arrays ({error})") from None
    return _unwrap(obj, path, "pickle")


def _read_mindspore(path: Path) -> RawCheckpoint:
    try:
        arrays = read_checkpoint(path.read_bytes())
    except (CheckpointFormatError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path}: malformed MindSpore checkpoint ({error})") from None
    return RawCheckpoint({k: torch.from_numpy(v.copy()) for k, v in arrays.items()}, "mindspore")


# -- renaming ---------------------------------------------------------------------------------------
Rule = tuple[str, Callable[[re.Match], str] | str]


def rename(state: dict[str, torch.Tensor], rules: list[Rule]) -> dict[str, torch.Tensor]:
    """Apply the first matching rule to each key; keys no rule matches are kept (reported later)."""
    out = {}
    for key, value in state.items():
        for pattern, replacement in rules:
            new, count = re.subn(pattern, replacement, key, count=1)
            if count:
                key = new
                break
        out[key] = value
    return out


def _positions(*official: int) -> dict[str, str]:
    """Official Sequential indices of (conv, bn) pairs -> our ``N.conv`` / ``N.bn``."""
    return {str(index): f"{n // 2}.{('conv', 'bn')[n % 2]}" for n, index in enumerate(official)}


PROJ = _positions(0, 1, 2, 3)  # dw, bn, pw, bn (torchvision branch1, Megvii branch_proj)
MAIN = _positions(0, 1, 3, 4, 5, 6)  # pw, bn, (relu), dw, bn, pw, bn
V1_MAIN_1 = {"0": "compress.conv", "1": "compress.bn", "3": "depthwise.conv", "4": "depthwise.bn"}
V1_MAIN_2 = {"0": "expand.conv", "1": "expand.bn"}
MINDCV_V1_MAIN_2 = {"0": "depthwise.conv", "1": "depthwise.bn", "2": "expand.conv", "3": "expand.bn"}
V2_PLUS_SHUFFLE = {**_positions(0, 1, 3, 4, 5, 6), "8": "3"}
V2_PLUS_XCEPTION = {**_positions(0, 1, 2, 3, 5, 6, 7, 8, 10, 11, 12, 13), "15": "6"}
SE = [(r"\.SE_opr\.1\.", ".reduce.conv."), (r"\.SE_opr\.2\.", ".reduce.bn."), (r"\.SE_opr\.4\.", ".expand.")]
REPEATS = {V1: (4, 8, 4), V2: (4, 8, 4), V2_PLUS: (4, 4, 8, 4)}


def _stage_unit(index: int, repeats: tuple[int, ...]) -> str:
    """Megvii's flat ``features.N`` -> our ``stages.S.I``."""
    for stage, count in enumerate(repeats):
        if index < count:
            return f"stages.{stage}.{index}"
        index -= count
    raise CheckpointError(f"features.{index + sum(repeats)} is beyond the {sum(repeats)} units of the model")


def _torchvision_rules() -> list[Rule]:
    def unit(branch: str, table: dict[str, str]) -> Callable[[re.Match], str]:
        return lambda m: f"stages.{int(m[1]) - 2}.{m[2]}.{branch}.{table[m[3]]}."

    return [
        (r"^conv1\.0\.", "stem.conv."), (r"^conv1\.1\.", "stem.bn."),
        (r"^conv5\.0\.", "conv_last.conv."), (r"^conv5\.1\.", "conv_last.bn."),
        (r"^fc\.", "head.fc."),
        (r"^stage(\d)\.(\d+)\.branch1\.(\d)\.", unit("branch_proj", PROJ)),
        (r"^stage(\d)\.(\d+)\.branch2\.(\d)\.", unit("branch_main", MAIN)),
    ]


def torchvision_to_ours(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return rename(state, _torchvision_rules())


def mmpretrain_to_ours(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    rules: list[Rule] = [
        (r"^backbone\.conv1\.", "stem."),
        (r"^backbone\.layers\.3\.(conv|bn)\.", r"conv_last.\1."),  # V2's conv5; V1 has 3 layers
        (r"^backbone\.layers\.(\d)\.(\d+)\.branch1\.", r"stages.\1.\2.branch_proj."),
        (r"^backbone\.layers\.(\d)\.(\d+)\.branch2\.", r"stages.\1.\2.branch_main."),
        (r"^backbone\.layers\.(\d)\.(\d+)\.g_conv_1x1_compress\.", r"stages.\1.\2.compress."),
        (r"^backbone\.layers\.(\d)\.(\d+)\.depthwise_conv3x3_bn\.", r"stages.\1.\2.depthwise."),
        (r"^backbone\.layers\.(\d)\.(\d+)\.g_conv_1x1_expand\.", r"stages.\1.\2.expand."),
        (r"^head\.fc\.", "head.fc."),
    ]
    return rename(state, rules)


def family_of(keys) -> str:
    keys = list(keys)
    if any(k.startswith(("LastSE.", "fc.0.", "head.hidden.")) for k in keys):
        return V2_PLUS
    if any("branch_main_1" in k or ".compress." in k or "g_conv_1x1" in k for k in keys):
        return V1
    return V2


def megvii_to_ours(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Megvii's official keys (also MegEngine's and, after ``_mindcv_layout``, mindcv's)."""
    state = {k.removeprefix("module."): v for k, v in state.items()}
    family = family_of(state)
    repeats = REPEATS[family]
    # only Xception units have a 10th layer in branch_main
    xception_units = {m[1] for k in state if (m := re.match(r"features\.(\d+)\.branch_main\.10\.", k))}

    def unit(m: re.Match) -> str:
        return _stage_unit(int(m[1]), repeats) + "."

    def main_branch(m: re.Match) -> str:
        unit_key = _stage_unit(int(m[1]), repeats)
        if family == V1:  # V1 units have no branch_main: compress / depthwise / expand
            return f"{unit_key}.{(V1_MAIN_1 if m[2] == '_1' else V1_MAIN_2)[m[3]]}."
        table = MAIN if family != V2_PLUS else V2_PLUS_XCEPTION if m[1] in xception_units else V2_PLUS_SHUFFLE
        return f"{unit_key}.branch_main.{table[m[3]]}."

    rules: list[Rule] = [
        (r"^first_conv\.0\.", "stem.conv."), (r"^first_conv\.1\.", "stem.bn."),
        (r"^conv_last\.0\.", "conv_last.conv."), (r"^conv_last\.1\.", "conv_last.bn."),
        (r"^classifier(\.0)?\.", "head.fc."),
        (r"^fc\.0\.", "head.hidden.0."),
        (r"^LastSE\.", "head.se."),
        (r"^features\.(\d+)\.branch_proj\.(\d+)\.", lambda m: f"{unit(m)}branch_proj.{PROJ[m[2]]}."),
        (r"^features\.(\d+)\.branch_main(_1|_2)?\.(\d+)\.", main_branch),
    ]
    state = rename(state, rules)
    if family == V2_PLUS:
        state = {_apply_all(k, SE): v for k, v in state.items()}
    return state


def _apply_all(key: str, rules: list[Rule]) -> str:
    for pattern, replacement in rules:
        key = re.sub(pattern, replacement, key)
    return key


def mindcv_to_ours(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """mindcv: Megvii's names, BN gamma/beta/moving_*, V1 group convs split into ``convs.k``."""
    state = {k: v for k, v in state.items() if not _is_training_state(k)}
    state = _concat_group_convs(state)
    state = {re.sub(r"\.(gamma|beta|moving_mean|moving_variance)$", lambda m: "." + BN_NAMES[m[1]], k): v
             for k, v in state.items()}
    if family_of(state) == V1:  # mindcv's V1 unit: branch_main_1 = [gconv, bn, relu]; shuffle; [dw, bn, gconv, bn]
        state = rename(state, [
            (r"^features\.(\d+)\.branch_main_2\.(\d)\.",
             lambda m: f"{_stage_unit(int(m[1]), REPEATS[V1])}.{MINDCV_V1_MAIN_2[m[2]]}."),
        ])
    return megvii_to_ours(state)


def _is_training_state(key: str) -> bool:
    """Optimizer and loop state that MindSpore stores beside the weights."""
    return key.startswith(("moments.", "accum.", "learning_rate", "global_step", "momentum", "scale_sense",
                           "current_iterator_step", "last_overflow_iterator_step", "epoch_num", "step_num"))


def _concat_group_convs(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``X.convs.k.weight`` (one conv per group, outputs concatenated in order) -> ``X.weight``."""
    groups: dict[str, dict[int, torch.Tensor]] = {}
    out = {}
    for key, value in state.items():
        m = re.match(r"(.+)\.convs\.(\d+)\.weight$", key)
        if m:
            groups.setdefault(m[1], {})[int(m[2])] = value
        else:
            out[key] = value
    for prefix, parts in groups.items():
        out[f"{prefix}.weight"] = torch.cat([parts[k] for k in sorted(parts)], 0)
    return out


def megengine_to_ours(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """MegEngine keeps group conv weights as (g, O/g, I/g, kh, kw) and BN params as (1, C, 1, 1)."""
    state = megvii_to_ours({k: v.flatten(0, 1) if v.ndim == 5 else v for k, v in state.items()})
    return {k: v.flatten() if ".bn." in k and v.ndim == 4 else v for k, v in state.items()}


PADDLE_UNIT = {  # PaddleClas's InvertedResidualDS (stride 2, suffixed by branch) and InvertedResidual layers
    "_conv_dw_1": "branch_proj.0", "_conv_linear_1": "branch_proj.1",
    "_conv_pw_2": "branch_main.0", "_conv_dw_2": "branch_main.1", "_conv_linear_2": "branch_main.2",
    "_conv_pw": "branch_main.0", "_conv_dw": "branch_main.1", "_conv_linear": "branch_main.2",
}


def paddleclas_to_ours(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """PaddleClas (``ppcls`` ShuffleNetV2, torchvision's layout) and Paddle's own ``paddle.vision.models``
    copy of it: units named ``<stage>_<n>`` from ``2_1``, each conv+BN a ``ConvBNLayer`` (``_conv``,
    ``_batch_norm``) or a ``ConvNormActivation`` (``0``, ``1``), BN statistics ``_mean``/``_variance``,
    and a Linear stored (in, out)."""
    rules: list[Rule] = [
        (r"^_conv1\.", "stem."), (r"^_last_conv\.", "conv_last."), (r"^_fc\.", "head.fc."),
        (r"^(\d)_(\d+)\.(_conv_[a-z]+(?:_[12])?)\.", lambda m: f"stages.{int(m[1]) - 2}.{int(m[2]) - 1}.{PADDLE_UNIT[m[3]]}."),
        (r"\.(?:_conv|0)\.weight$", ".conv.weight"), (r"\.(?:_batch_norm|1)\._mean$", ".bn.running_mean"),
        (r"\.(?:_batch_norm|1)\._variance$", ".bn.running_var"), (r"\.(?:_batch_norm|1)\.(weight|bias)$", r".bn.\1"),
    ]
    state = {_apply_all(k, rules): v for k, v in state.items()}
    return {k: v.t() if k == "head.fc.weight" else v for k, v in state.items()}


@dataclass(frozen=True)
class SourceFormat:
    name: str
    description: str
    to_ours: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]
    variant_kwargs: dict[str, dict] = field(default_factory=dict)  # family -> architecture kwargs
    shuffle_after_depthwise: bool = False  # V1 units shuffle after the DW conv: permute DW params
    preprocessing: Preprocessing = IMAGENET

    def preprocessing_for(self, model_name: str) -> Preprocessing:
        # torchvision's only 1.5x/2.0x weights were evaluated at resize 232 (trained at 176)
        if self.name == "torchvision" and model_name.endswith(("x1_5", "x2_0")):
            return IMAGENET_RESIZE_232
        return self.preprocessing


MEGVII_V1 = {"shuffle": "megvii", "fc_bias": False}
MEGVII_V2 = {"layout": "megvii"}
FORMATS = {
    f.name: f
    for f in (
        SourceFormat("torchvision", "plain state_dict (shufflenetv2_*.pth)", torchvision_to_ours),
        SourceFormat("mmpretrain", '{"state_dict", "meta"}, backbone.* / head.fc.*', mmpretrain_to_ours,
                     shuffle_after_depthwise=True),
        SourceFormat("megvii", '{"state_dict"} with module.* keys (.pth.tar)', megvii_to_ours,
                     {V1: MEGVII_V1, V2: MEGVII_V2}, shuffle_after_depthwise=True, preprocessing=MEGVII),
        SourceFormat("mindcv", "MindSpore .ckpt (protobuf)", mindcv_to_ours, {V1: MEGVII_V1, V2: MEGVII_V2}),
        SourceFormat("megengine", "MegEngine .pkl (pickled numpy arrays)", megengine_to_ours,
                     {V2: MEGVII_V2}, preprocessing=MEGENGINE),
        SourceFormat("paddleclas", "PaddleClas or paddle.vision .pdparams (paddle.save: pickled numpy arrays)",
                     paddleclas_to_ours),
    )
}


def detect_format(raw: RawCheckpoint) -> str:
    """``"ours"`` or a key of ``FORMATS``, from the container and the key names."""
    if raw.metadata.get("shufflenet.format"):
        return "ours"
    if raw.container == "mindspore":
        return "mindcv"
    if raw.container == "pickle":
        return "paddleclas" if {"_conv1._conv.weight", "_conv1.0.weight"} & set(raw.tensors) else "megengine"
    keys = list(raw.tensors)
    if any(k.startswith("backbone.") for k in keys):
        return "mmpretrain"
    if any(k.removeprefix("module.").startswith("first_conv.") for k in keys):
        return "megvii"
    if "conv1.0.weight" in keys and any(k.startswith("stage2.") for k in keys):
        return "torchvision"
    if "stem.conv.weight" in keys:
        return "state_dict"
    raise CheckpointError(
        f"cannot tell which zoo this checkpoint comes from (first keys: {', '.join(keys[:4])}); "
        f"pass --from {{{','.join(FORMATS)}}}"
    )
