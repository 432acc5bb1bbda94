"""Quantization-aware training: the INT8 model that ONNX Runtime runs, simulated in float while training.

``prepare_qat(model)`` folds BN into the convolutions and makes every conv and the classifier see
what ONNX Runtime's INT8 kernels see: int8 weights per output channel (symmetric) and uint8
activations per tensor (affine, range observed as a moving average while training), through
``torch.fake_quantize_*`` (straight-through gradients). Those ops export as QuantizeLinear /
DequantizeLinear pairs, which ONNX Runtime fuses into QLinearConv, so ``export_onnx`` of a prepared
model *is* the INT8 file and computes what training evaluated; no calibration step follows.

Weights use 7 of the 8 bits (scale = max|w| / 63) on CPUs without VNNI, for the same reason as
``quantize.py``'s ``reduce_range``: their int8 kernels can saturate 16-bit sums with full-range weights.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..models.layers import ConvBNAct
from .fuse import fuse_conv_bn
from .quantize import cpu_has_vnni


class FakeQuantize(nn.Module):
    """uint8 per-tensor fake quantization; the range is a moving average of batch min/max in training."""

    def __init__(self, momentum: float = 0.01) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("low", torch.tensor(float("nan")))  # nan: nothing observed yet
        self.register_buffer("high", torch.tensor(float("nan")))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self._observe(x.detach())
        return self.quantize(x)

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` on this quantizer's grid, with the range as it stands (no observation)."""
        low, high = self.low.clamp(max=0), self.high.clamp(min=0)  # zero must be exact: padding, ReLU
        scale = ((high - low) / 255).clamp(min=1e-8)
        zero_point = (-low / scale).round().clamp(0, 255).int()
        if not self.training:  # fixed numbers: an export gets constants, not the arithmetic that made them
            if torch.isnan(self.low):
                raise RuntimeError("a QAT model runs in eval mode only after training batches set its activation ranges")
            scale, zero_point = scale.item(), zero_point.item()
        return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, 0, 255)

    @torch.no_grad()
    def _observe(self, x: torch.Tensor) -> None:
        low, high = x.min().float(), x.max().float()
        if torch.isnan(self.low):
            self.low.copy_(low)
            self.high.copy_(high)
        else:
            self.low.lerp_(low, self.momentum)
            self.high.lerp_(high, self.momentum)


def fake_quantize_weight(weight: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Symmetric int8 per output channel: scale = max|w| / levels (127, or 63 for 7-bit weights)."""
    scale = (weight.detach().abs().amax(dim=tuple(range(1, weight.dim()))) / levels).clamp(min=1e-12)
    zero_point = torch.zeros_like(scale, dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(weight, scale, zero_point, 0, -128, 127)


class _FakeQuantized:
    """Turns a layer of our private copy into its fake-quantized subclass, in place: the same
    parameters, plus an input quantizer and the weights' levels as a buffer (a checkpoint keeps the
    INT8 it was trained for, on a machine whose CPU would choose otherwise)."""

    @classmethod
    def from_float(cls, layer: nn.Module, levels: int) -> nn.Module:
        layer.__class__ = cls  # same base class, so the same parameters and attributes
        layer.requires_grad_(True)  # BN folding leaves the new bias frozen; it carries BN's shift and trains
        layer.input_quant = FakeQuantize()
        layer.register_buffer("levels", torch.tensor(float(levels), device=layer.weight.device))
        return layer


class QuantConv2d(_FakeQuantized, nn.Conv2d):
    """A Conv2d (bias from the folded BN) with fake-quantized input and weights."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.input_quant(x), fake_quantize_weight(self.weight, self.levels), self.bias)


class QuantLinear(_FakeQuantized, nn.Linear):
    """A Linear with fake-quantized input and weights."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.input_quant(x), fake_quantize_weight(self.weight, self.levels), self.bias)


def prepare_qat(model: nn.Module, reduce_range: bool | None = None) -> nn.Module:
    """A copy of ``model`` (training mode, metadata attributes kept) that trains as its INT8 version.

    BN is folded first, so its statistics are frozen: QAT fine-tunes a trained model. Each
    ``ConvBNAct`` quantizes its weights and (after the activation) its output, and each unit and V1's
    average-pooled shortcut their outputs, which gives ONNX Runtime the Q/DQ pairs it needs to run every
    conv, residual add, pool and concat in integers (QLinearConv, QLinearAdd, QLinearAveragePool,
    QLinearConcat). A
    conv or the classifier quantizes its input too unless that input is already on an upstream
    quantizer's grid (``_drop_repeated_quantizers``): one quantizer per tensor, as post-training
    quantization has it, so ONNX Runtime keeps no re-quantization between two. ``reduce_range=None``:
    7-bit weights without VNNI.
    """
    levels = 63 if (not cpu_has_vnni() if reduce_range is None else reduce_range) else 127
    prepared = fuse_conv_bn(model)
    for module in list(prepared.modules()):
        if isinstance(module, ConvBNAct):
            QuantConv2d.from_float(module.conv, levels)
            module.add_module("output_quant", FakeQuantize())  # a Sequential: runs after conv, bn, act
        elif type(module) is nn.Linear:
            QuantLinear.from_float(module, levels)
    for stage in prepared.stages:  # a unit's output (after its add or concat), V1's pooled shortcut: int8 too
        for module in [*stage, *(m for m in stage.modules() if isinstance(m, nn.AvgPool2d))]:
            module.output_quant = FakeQuantize()
            module.register_forward_hook(_quantize_output)  # a hook keeps the module's type and code as they are
    _drop_repeated_quantizers(prepared)
    prepared.qat_weight_levels = levels
    return prepared.train()


@torch.no_grad()
def _drop_repeated_quantizers(model: nn.Module) -> None:
    """Remove each layer's input quantizer whose input lies on the grid of a quantizer that ran
    before it, found by one forward pass of a random image.

    Such an input is a quantizer's output passed on unchanged in value (a shuffle, a split, a max
    pool, a ReLU). A second quantizer there would observe the first's rounded values and its range
    would drift apart during training; ONNX Runtime then has to re-quantize between the two. The
    decision depends on the architecture only, so a training state rebuilds the same modules.
    """
    layers = [m for m in model.modules() if isinstance(m, _FakeQuantized)]
    quantizers = [m for m in model.modules() if isinstance(m, FakeQuantize)]
    ran: list[FakeQuantize] = []
    repeated: list[nn.Module] = []

    def check_input(layer: nn.Module, inputs: tuple) -> None:
        x = inputs[0]  # a constant tensor (all zeros) would lie on every grid and prove nothing
        if x.amin() < x.amax() and any(torch.equal(q.quantize(x), x) for q in ran):
            repeated.append(layer)

    hooks = [layer.register_forward_pre_hook(check_input) for layer in layers]
    hooks += [q.register_forward_hook(lambda q, inputs, output: ran.append(q)) for q in quantizers]
    device = next(model.parameters()).device
    image = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):  # dropout's draws are put back
        model.train()(image)  # training mode: each quantizer takes its range from what it sees
    for hook in hooks:
        hook.remove()
    for layer in repeated:
        layer.input_quant = nn.Identity()
    for q in quantizers:  # the random image's ranges must not seed training's
        q.low.fill_(float("nan"))
        q.high.fill_(float("nan"))


def _quantize_output(unit: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
    return unit.output_quant(output)
