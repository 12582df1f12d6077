"""Test helpers: state dicts laid out as the official MGD-SSSS / CPS networks name them, and an
independent functional forward over such a state dict.

Written from the official networks' key names, shapes and operations (read from the public
code), not from mgd's modules, so that the import tests compare against an outside reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# torchvision MobileNetV2 1.0 blocks: (expansion t, channels c, repeats n, first stride s)
MOBILENET_SETTING = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                     (6, 160, 3, 2), (6, 320, 1, 1)]
MOBILENET_DILATIONS = {15: 2, 16: 4, 17: 8}
# name -> (stem, stem width, bottleneck?, blocks per layer, bottleneck base width)
RESNETS = {
    "resnet18_v1c": ("deep", 32, False, (2, 2, 2, 2), 64),
    "resnet101_v1c": ("deep", 64, True, (3, 4, 23, 3), 64),
    "wide_resnet50_2": ("7x7", 64, True, (3, 4, 6, 3), 128),
}


def _conv(state: dict, key: str, out_ch: int, in_ch: int, k: int, generator: torch.Generator) -> None:
    state[key + ".weight"] = torch.randn(out_ch, in_ch, k, k, generator=generator) * (2 / (in_ch * k * k)) ** 0.5


def _bn(state: dict, key: str, ch: int, generator: torch.Generator) -> None:
    state[key + ".weight"] = 1 + 0.1 * torch.randn(ch, generator=generator)
    state[key + ".bias"] = 0.1 * torch.randn(ch, generator=generator)
    state[key + ".running_mean"] = 0.1 * torch.randn(ch, generator=generator)
    state[key + ".running_var"] = 0.5 + torch.rand(ch, generator=generator)
    state[key + ".num_batches_tracked"] = torch.tensor(7)


def resnet_backbone_state(name: str, generator: torch.Generator, with_fc: bool = True) -> dict:
    """furnace/timm ResNet names: conv1(.0/.1/.3/.4/.6 deep stem), bn1, layerN.M.*, fc."""
    stem, width, bottleneck, layers, base = RESNETS[name]
    state: dict = {}
    if stem == "deep":
        _conv(state, "conv1.0", width, 3, 3, generator)
        _bn(state, "conv1.1", width, generator)
        _conv(state, "conv1.3", width, width, 3, generator)
        _bn(state, "conv1.4", width, generator)
        _conv(state, "conv1.6", width * 2, width, 3, generator)
        inplanes = width * 2
    else:
        _conv(state, "conv1", 64, 3, 7, generator)
        inplanes = 64
    _bn(state, "bn1", inplanes, generator)
    expansion = 4 if bottleneck else 1
    for index, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers), start=1):
        for block in range(blocks):
            key = f"layer{index}.{block}"
            mid = planes * base // 64
            if bottleneck:
                _conv(state, f"{key}.conv1", mid, inplanes, 1, generator)
                _bn(state, f"{key}.bn1", mid, generator)
                _conv(state, f"{key}.conv2", mid, mid, 3, generator)
                _bn(state, f"{key}.bn2", mid, generator)
                _conv(state, f"{key}.conv3", planes * 4, mid, 1, generator)
                _bn(state, f"{key}.bn3", planes * 4, generator)
            else:
                _conv(state, f"{key}.conv1", planes, inplanes, 3, generator)
                _bn(state, f"{key}.bn1", planes, generator)
                _conv(state, f"{key}.conv2", planes, planes, 3, generator)
                _bn(state, f"{key}.bn2", planes, generator)
            if block == 0 and (index > 1 or inplanes != planes * expansion):
                _conv(state, f"{key}.downsample.0", planes * expansion, inplanes, 1, generator)
                _bn(state, f"{key}.downsample.1", planes * expansion, generator)
            inplanes = planes * expansion
    if with_fc:
        state["fc.weight"] = torch.randn(1000, inplanes, generator=generator) * 0.01
        state["fc.bias"] = torch.zeros(1000)
    return state


def mobilenet_backbone_state(generator: torch.Generator) -> dict:
    """torchvision mobilenet_v2 names features.0..17 (no features.18) plus classifier.1."""
    state: dict = {}
    _conv(state, "features.0.0", 32, 3, 3, generator)
    _bn(state, "features.0.1", 32, generator)
    inp, index = 32, 1
    for t, c, n, _ in MOBILENET_SETTING:
        for _ in range(n):
            hidden = inp * t
            key, part = f"features.{index}.conv", 0
            if t != 1:
                _conv(state, f"{key}.0.0", hidden, inp, 1, generator)
                _bn(state, f"{key}.0.1", hidden, generator)
                part = 1
            state[f"{key}.{part}.0.weight"] = torch.randn(hidden, 1, 3, 3, generator=generator) * (2 / 9) ** 0.5
            _bn(state, f"{key}.{part}.1", hidden, generator)
            _conv(state, f"{key}.{part + 1}", c, hidden, 1, generator)
            _bn(state, f"{key}.{part + 2}", c, generator)
            inp, index = c, index + 1
    state["classifier.1.weight"] = torch.randn(1000, 1280, generator=generator) * 0.01
    state["classifier.1.bias"] = torch.zeros(1000)
    return state


def head_state(high_ch: int, low_ch: int, low_out: int, num_classes: int, generator: torch.Generator) -> dict:
    """Names of the official Head/HeadSmall (head.aspp.*, head.reduce.*, head.last_conv.*) and classifier."""
    state: dict = {}
    _conv(state, "head.aspp.map_convs.0", 256, high_ch, 1, generator)
    for i in (1, 2, 3):
        _conv(state, f"head.aspp.map_convs.{i}", 256, high_ch, 3, generator)
    _bn(state, "head.aspp.map_bn", 1024, generator)
    _conv(state, "head.aspp.global_pooling_conv", 256, high_ch, 1, generator)
    _bn(state, "head.aspp.global_pooling_bn", 256, generator)
    _conv(state, "head.aspp.red_conv", 256, 1024, 1, generator)
    _conv(state, "head.aspp.pool_red_conv", 256, 256, 1, generator)
    _bn(state, "head.aspp.red_bn", 256, generator)
    _conv(state, "head.reduce.0", low_out, low_ch, 1, generator)
    _bn(state, "head.reduce.1", low_out, generator)
    _conv(state, "head.last_conv.0", 256, 256 + low_out, 3, generator)
    _bn(state, "head.last_conv.1", 256, generator)
    _conv(state, "head.last_conv.3", 256, 256, 3, generator)
    _bn(state, "head.last_conv.4", 256, generator)
    _conv(state, "classifier", num_classes, 256, 1, generator)
    state["classifier.bias"] = 0.1 * torch.randn(num_classes, generator=generator)
    return state


def official_network_state(name: str, num_classes: int, seed: int = 0) -> dict:
    """One official network's state dict (backbone.*, head.*, classifier.*), random values."""
    generator = torch.Generator().manual_seed(seed)
    if name == "mobilenetv2_dilated":
        backbone = mobilenet_backbone_state(generator)
        head = head_state(320, 24, 24, num_classes, generator)
    else:
        backbone = resnet_backbone_state(name, generator)
        bottleneck = RESNETS[name][2]
        head = head_state(2048 if bottleneck else 512, 256 if bottleneck else 64, 48, num_classes, generator)
    return {**{f"backbone.{k}": v for k, v in backbone.items()}, **head}


class PlantedPayload:
    """Unpickling this writes ``marker``: a file holding it must be refused without running it."""

    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        return (self.marker.write_text, ("payload ran",))


# ---- functional reference forward (eval mode) ----

def _bn_f(x: torch.Tensor, s: dict, key: str) -> torch.Tensor:
    return F.batch_norm(x, s[key + ".running_mean"], s[key + ".running_var"], s[key + ".weight"],
                        s[key + ".bias"], training=False, eps=1e-5)


def _conv_f(x, s, key, stride=1, dilation=1, groups=1):
    weight = s[key + ".weight"]
    padding = dilation * (weight.shape[-1] // 2)
    return F.conv2d(x, weight, s.get(key + ".bias"), stride, padding, dilation, groups)


def _resnet_f(x: torch.Tensor, s: dict, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    stem, _, bottleneck, layers, _ = RESNETS[name]
    if stem == "deep":
        x = F.relu(_bn_f(_conv_f(x, s, "backbone.conv1.0", stride=2), s, "backbone.conv1.1"))
        x = F.relu(_bn_f(_conv_f(x, s, "backbone.conv1.3"), s, "backbone.conv1.4"))
        x = _conv_f(x, s, "backbone.conv1.6")
    else:
        x = F.conv2d(x, s["backbone.conv1.weight"], stride=2, padding=3)
    x = F.max_pool2d(F.relu(_bn_f(x, s, "backbone.bn1")), 3, 2, 1)
    outputs = []
    for index, blocks in enumerate(layers, start=1):
        for block in range(blocks):
            key = f"backbone.layer{index}.{block}"
            # layer4: stride removed, block i dilated 2 * 2**i (the official _nostride_dilate)
            stride = 2 if (block == 0 and index in (2, 3)) else 1
            dilation = 2 ** (block + 1) if index == 4 else 1
            if bottleneck:
                out = F.relu(_bn_f(_conv_f(x, s, f"{key}.conv1"), s, f"{key}.bn1"))
                out = F.relu(_bn_f(_conv_f(out, s, f"{key}.conv2", stride, dilation), s, f"{key}.bn2"))
                out = _bn_f(_conv_f(out, s, f"{key}.conv3"), s, f"{key}.bn3")
            else:
                out = F.relu(_bn_f(_conv_f(x, s, f"{key}.conv1", stride, dilation), s, f"{key}.bn1"))
                out = _bn_f(_conv_f(out, s, f"{key}.conv2", 1, dilation), s, f"{key}.bn2")
            if f"{key}.downsample.0.weight" in s:
                x = _bn_f(_conv_f(x, s, f"{key}.downsample.0", stride), s, f"{key}.downsample.1")
            x = F.relu(out + x)
        outputs.append(x)
    return outputs[0], outputs[-1]


def _mobilenet_f(x: torch.Tensor, s: dict) -> tuple[torch.Tensor, torch.Tensor]:
    x = F.relu6(_bn_f(_conv_f(x, s, "backbone.features.0.0", stride=2), s, "backbone.features.0.1"))
    inp, index, low = 32, 1, None
    for t, c, n, first_stride in MOBILENET_SETTING:
        for repeat in range(n):
            key, part = f"backbone.features.{index}.conv", 0
            stride = first_stride if repeat == 0 else 1
            out = x
            if t != 1:
                out = F.relu6(_bn_f(_conv_f(out, s, f"{key}.0.0"), s, f"{key}.0.1"))
                part = 1
            dilation = MOBILENET_DILATIONS.get(index, 1)
            out = _conv_f(out, s, f"{key}.{part}.0", stride, dilation, groups=out.shape[1])
            out = F.relu6(_bn_f(out, s, f"{key}.{part}.1"))
            out = _bn_f(_conv_f(out, s, f"{key}.{part + 1}"), s, f"{key}.{part + 2}")
            x = x + out if stride == 1 and inp == c else out
            if index == 3:
                low = x
            inp, index = c, index + 1
    return low, x


def reference_forward(s: dict, name: str, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, decoder feature) of the official network ``name`` with weights ``s``, eval mode."""
    low, high = _mobilenet_f(images, s) if name == "mobilenetv2_dilated" else _resnet_f(images, s, name)
    branches = torch.cat([_conv_f(high, s, "head.aspp.map_convs.0")]
                         + [_conv_f(high, s, f"head.aspp.map_convs.{i}", dilation=rate)
                            for i, rate in ((1, 6), (2, 12), (3, 18))], dim=1)
    out = _conv_f(F.leaky_relu(_bn_f(branches, s, "head.aspp.map_bn"), 0.01), s, "head.aspp.red_conv")
    pool = high.flatten(2).mean(-1)[..., None, None]
    pool = F.leaky_relu(_bn_f(_conv_f(pool, s, "head.aspp.global_pooling_conv"), s,
                              "head.aspp.global_pooling_bn"), 0.01)
    out = out + _conv_f(pool, s, "head.aspp.pool_red_conv").repeat(1, 1, *high.shape[-2:])
    context = F.leaky_relu(_bn_f(out, s, "head.aspp.red_bn"), 0.01)
    reduced = F.relu(_bn_f(_conv_f(low, s, "head.reduce.0"), s, "head.reduce.1"))
    context = F.interpolate(context, size=low.shape[-2:], mode="bilinear", align_corners=True)
    feature = torch.cat([context, reduced], dim=1)
    feature = F.relu(_bn_f(_conv_f(feature, s, "head.last_conv.0"), s, "head.last_conv.1"))
    feature = F.relu(_bn_f(_conv_f(feature, s, "head.last_conv.3"), s, "head.last_conv.4"))
    logits = F.interpolate(_conv_f(feature, s, "classifier"), size=images.shape[-2:], mode="bilinear",
                           align_corners=True)
    return logits, feature
