"""A lean differentiable EfficientNet-Lite: images -> pooled features, for methods that need input
gradients (ODIN's perturbation, Liang et al., ICLR 2018).

The full :class:`tagood.backbones.efficientnet.LiteFeatures` graph also computes every block's
FeatureNorm, the 1000-class logits and keeps BatchNorm as separate operators; none of it reaches
the pooled features' gradient. Here each eval-mode BatchNorm is folded into the convolution before
it (``w' = w * gamma / sqrt(var + eps)``, ``b' = beta - mean * gamma / sqrt(var + eps)``), and only
stem -> MBConv blocks -> head convolution -> global average pool is computed. The result equals
``LiteFeatures(...)[1]`` up to float32 rounding (``tests/test_odin_lean.py``); ODIN's score with it
is about 1.5x faster on 2 CPU cores (``benchmarks/odin_lean.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:  # the package is untyped (its names are Any to mypy)
    from efficientnet_lite_pytorch import EfficientNet
    from efficientnet_lite_pytorch.model import MBConvBlock


def fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Sequential:
    """``bn(conv(x))`` of an eval-mode BatchNorm as one convolution with a bias, and the convolution's static
    "same" padding, if it has one: inside the convolution when it is the same on all four sides (stride 1),
    else as a zero-padding operator in front (TensorFlow's "same" pads stride-2 convolutions one more on the
    right and bottom). Inside the convolution no padded copy of the activations is made, nor its gradient
    taken apart again; the gradients are bit for bit the same (``tests/test_odin_lean.py``)."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("lite_pooled: a BatchNorm without running statistics cannot be folded")
    w = conv.weight.detach()
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    bias = bn.bias.detach() - bn.running_mean * scale
    if conv.bias is not None:
        bias = bias + conv.bias.detach() * scale
    pad = getattr(conv, "static_padding", None)
    padding: str | tuple[int, int] = conv.padding if isinstance(conv.padding, str) else _pair(conv.padding)
    sides = tuple(pad.padding) if isinstance(pad, nn.ZeroPad2d) else ()
    if len(set(sides)) == 1 and tuple(_pair(conv.padding)) == (0, 0):
        padding, pad = (sides[0], sides[0]), None
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, _pair(conv.kernel_size), _pair(conv.stride), padding,
                      dilation=_pair(conv.dilation), groups=conv.groups, bias=True)
    assert fused.bias is not None  # bias=True
    with torch.no_grad():
        fused.weight.copy_(w * scale.view(-1, 1, 1, 1))
        fused.bias.copy_(bias)
    return nn.Sequential(pad if isinstance(pad, nn.Module) else nn.Identity(), fused)


class _Block(nn.Module):
    """One MBConv block of EfficientNet-Lite (no squeeze-excitation), BatchNorm folded."""

    def __init__(self, block: MBConvBlock) -> None:
        super().__init__()
        if getattr(block, "has_se", False):
            raise ValueError("lite_pooled: blocks with squeeze-excitation are not EfficientNet-Lite blocks")
        args = block._block_args
        layers: list[nn.Module] = []
        if args.expand_ratio != 1:
            layers += [fold_bn(block._expand_conv, block._bn0), block._swish]
        layers += [fold_bn(block._depthwise_conv, block._bn1), block._swish, fold_bn(block._project_conv, block._bn2)]
        self.body = nn.Sequential(*layers)
        self.skip = bool(block.id_skip and tuple(_pair(args.stride)) == (1, 1) and args.input_filters == args.output_filters)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return y + x if self.skip else y


def _pair(v: int | str | tuple[int, ...] | list[int]) -> tuple[int, int]:
    if isinstance(v, (list, tuple)):
        return (int(v[0]), int(v[-1]))
    return (int(v), int(v))


class LitePooled(nn.Module):
    """images (B,3,S,S), already normalised as the backbone's ``preprocess`` does -> pooled features
    (B,1280): the same function as ``LiteFeatures(model)(x)[1]`` with BatchNorm folded and nothing
    else computed. Built from an eval-mode EfficientNet-Lite (``efficientnet_lite_pytorch``); its
    parameters do not require gradients (only the input's gradient is wanted)."""

    def __init__(self, model: EfficientNet) -> None:
        super().__init__()
        if model.training:
            raise ValueError("lite_pooled: fold BatchNorm only of a model in eval mode (call .eval() first)")
        act = model._swish  # ReLU6 in the Lite variants (stateless; shared)
        self.stem = nn.Sequential(fold_bn(model._conv_stem, model._bn0), act)
        self.blocks = nn.Sequential(*[_Block(b) for b in model._blocks])
        self.head = nn.Sequential(fold_bn(model._conv_head, model._bn1), act)
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        return self.head(self.blocks(self.stem(x))).mean(dim=(2, 3))
