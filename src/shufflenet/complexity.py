"""Parameters and multiply-adds (the papers' "FLOPs"), counted by ``torch.utils.flop_counter``."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@dataclass(frozen=True)
class Complexity:
    params: int
    macs: int  # multiply-adds of convolutions and linear layers, as the papers count them
    input_size: int


def complexity(model: nn.Module | str, input_size: int = 224) -> Complexity:
    """Count the parameters and multiply-adds of one image of ``input_size`` x ``input_size``.

    ``model`` is a module or a registered name. Only convolutions and matrix products are
    counted (BN, activations, pooling and additions are not), which is the convention of the
    ShuffleNet papers and of torchvision's ``_ops``.
    """
    if isinstance(model, str):
        from .models import get_model

        model = get_model(model)
    params = sum(p.numel() for p in model.parameters())
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, input_size, input_size, device=device))
    model.train(was_training)
    return Complexity(params=params, macs=counter.get_total_flops() // 2, input_size=input_size)
