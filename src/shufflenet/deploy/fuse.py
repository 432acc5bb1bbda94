"""Fold BatchNorm into the preceding convolution for inference (one op fewer per ConvBNAct)."""

from __future__ import annotations

import copy

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..models.layers import ConvBNAct


def fuse_conv_bn(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode with every ``ConvBNAct``'s BN folded into its conv.

    The BN becomes ``nn.Identity`` so module names (and thus ``extract_feat``) stay unchanged.
    Metadata attributes (``preprocessing``, ``class_names``, ...) are kept by the deep copy.
    """
    fused = copy.deepcopy(model).eval()
    for module in fused.modules():
        if isinstance(module, ConvBNAct) and isinstance(module.bn, nn.BatchNorm2d):
            module.conv = fuse_conv_bn_eval(module.conv, module.bn)
            module.bn = nn.Identity()
    return fused
