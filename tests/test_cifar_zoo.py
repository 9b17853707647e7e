"""The CIFAR KD zoo: timm interface, published checkpoint layout, published forward, weight loading.

The layout and forward checks do not look at our modules: ``_published_layout`` lists the state-dict
keys and shapes that the published CRD / mdistiller model definitions create, and ``_reference_*``
recompute the published forward pass functionally from a state dict. Both were written from reading
the published code (``mdistiller/models/cifar/*.py``, same as CRD's ``RepDistiller/models``).
"""

from __future__ import annotations

import math

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

import kdcompress.models.cifar  # noqa: F401  (registers the zoo)
from kdcompress.models.cifar import CIFAR100_MEAN, CIFAR100_STD, CIFAR_MODELS

EXPECTED_NAMES = {
    *(f"cifar_resnet{d}" for d in (8, 14, 20, 32, 44, 56, 110)),
    "cifar_resnet8x4",
    "cifar_resnet32x4",
    *(f"cifar_wrn_{d}_{k}" for d in (16, 40) for k in (1, 2)),
    *(f"cifar_vgg{d}" for d in (8, 11, 13, 16, 19)),
    "cifar_mobilenetv2",
    "cifar_shufflev1",
    "cifar_shufflev2",
    "cifar_resnet18",
    "cifar_resnet34",
    "cifar_resnet50",
}
# One model per family (plus the layout variants that matter) for the heavier checks.
REPRESENTATIVES = (
    "cifar_resnet8",
    "cifar_resnet8x4",
    "cifar_wrn_16_1",
    "cifar_wrn_16_2",
    "cifar_vgg8",
    "cifar_vgg13",
    "cifar_mobilenetv2",
    "cifar_shufflev1",
    "cifar_shufflev2",
    "cifar_resnet18",
    "cifar_resnet50",
)

_CACHE: dict[str, nn.Module] = {}


def _model(name: str) -> nn.Module:
    """One shared instance per architecture (tests that change a model build their own)."""
    if name not in _CACHE:
        torch.manual_seed(0)
        _CACHE[name] = timm.create_model(name, num_classes=100)
    return _CACHE[name]


# ---------------------------------------------------------------------------------------------
# The published layout, written from the published model definitions.
# ---------------------------------------------------------------------------------------------
def _conv(out: dict, key: str, cout: int, cin: int, k: int, groups: int = 1, bias: bool = False) -> None:
    out[f"{key}.weight"] = (cout, cin // groups, k, k)
    if bias:
        out[f"{key}.bias"] = (cout,)


def _bn(out: dict, key: str, c: int) -> None:
    for leaf in ("weight", "bias", "running_mean", "running_var"):
        out[f"{key}.{leaf}"] = (c,)
    out[f"{key}.num_batches_tracked"] = ()


def _linear(out: dict, key: str, cin: int, cout: int = 100) -> None:
    out[f"{key}.weight"] = (cout, cin)
    out[f"{key}.bias"] = (cout,)


def _layout_resnet(depth: int, widths: tuple[int, ...]) -> dict:
    out: dict = {}
    n = (depth - 2) // 6
    _conv(out, "conv1", widths[0], 3, 3)
    _bn(out, "bn1", widths[0])
    inplanes = widths[0]
    for s in (1, 2, 3):
        planes, stride = widths[s], 1 if s == 1 else 2
        for b in range(n):
            p = f"layer{s}.{b}"
            _conv(out, f"{p}.conv1", planes, inplanes, 3)
            _bn(out, f"{p}.bn1", planes)
            _conv(out, f"{p}.conv2", planes, planes, 3)
            _bn(out, f"{p}.bn2", planes)
            if b == 0 and (stride != 1 or inplanes != planes):
                _conv(out, f"{p}.downsample.0", planes, inplanes, 1)
                _bn(out, f"{p}.downsample.1", planes)
            inplanes = planes
    _linear(out, "fc", widths[3])
    return out


def _layout_resnetv2(bottleneck: bool, counts: tuple[int, ...]) -> dict:
    out: dict = {}
    expansion = 4 if bottleneck else 1
    _conv(out, "conv1", 64, 3, 3)
    _bn(out, "bn1", 64)
    cin = 64
    for s, (planes, n) in enumerate(zip((64, 128, 256, 512), counts, strict=True), start=1):
        for b in range(n):
            stride = 2 if (s > 1 and b == 0) else 1
            p = f"layer{s}.{b}"
            if bottleneck:
                _conv(out, f"{p}.conv1", planes, cin, 1)
                _bn(out, f"{p}.bn1", planes)
                _conv(out, f"{p}.conv2", planes, planes, 3)
                _bn(out, f"{p}.bn2", planes)
                _conv(out, f"{p}.conv3", planes * 4, planes, 1)
                _bn(out, f"{p}.bn3", planes * 4)
            else:
                _conv(out, f"{p}.conv1", planes, cin, 3)
                _bn(out, f"{p}.bn1", planes)
                _conv(out, f"{p}.conv2", planes, planes, 3)
                _bn(out, f"{p}.bn2", planes)
            if stride != 1 or cin != planes * expansion:
                _conv(out, f"{p}.shortcut.0", planes * expansion, cin, 1)
                _bn(out, f"{p}.shortcut.1", planes * expansion)
            cin = planes * expansion
    _linear(out, "linear", 512 * expansion)
    return out


def _layout_wrn(depth: int, k: int) -> dict:
    out: dict = {}
    n = (depth - 4) // 6
    ch = (16, 16 * k, 32 * k, 64 * k)
    _conv(out, "conv1", 16, 3, 3)
    for s in (1, 2, 3):
        for i in range(n):
            cin = ch[s - 1] if i == 0 else ch[s]
            p = f"block{s}.layer.{i}"
            _bn(out, f"{p}.bn1", cin)
            _conv(out, f"{p}.conv1", ch[s], cin, 3)
            _bn(out, f"{p}.bn2", ch[s])
            _conv(out, f"{p}.conv2", ch[s], ch[s], 3)
            if cin != ch[s]:
                _conv(out, f"{p}.convShortcut", ch[s], cin, 1)
    _bn(out, "bn1", ch[3])
    _linear(out, "fc", ch[3])
    return out


_VGG_CFG = {
    8: [[64], [128], [256], [512], [512]],
    11: [[64], [128], [256, 256], [512, 512], [512, 512]],
    13: [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    16: [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    19: [[64, 64], [128, 128], [256] * 4, [512] * 4, [512] * 4],
}


def _layout_vgg(depth: int) -> dict:
    out: dict = {}
    cin = 3
    for b, widths in enumerate(_VGG_CFG[depth]):
        for j, w in enumerate(widths):  # [conv, bn, relu] per width
            _conv(out, f"block{b}.{3 * j}", w, cin, 3, bias=True)
            _bn(out, f"block{b}.{3 * j + 1}", w)
            cin = w
    _linear(out, "classifier", 512)
    return out


_MOBILE_SETTING = [
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


def _layout_mobile_half() -> dict:
    out: dict = {}
    _conv(out, "conv1.0", 16, 3, 3)
    _bn(out, "conv1.1", 16)
    cin = 16
    for i, (t, c, n, _s) in enumerate(_MOBILE_SETTING):
        cout = int(c * 0.5)
        for j in range(n):
            mid, p = cin * t, f"blocks.{i}.{j}.conv"
            _conv(out, f"{p}.0", mid, cin, 1)
            _bn(out, f"{p}.1", mid)
            _conv(out, f"{p}.3", mid, mid, 3, groups=mid)
            _bn(out, f"{p}.4", mid)
            _conv(out, f"{p}.6", cout, mid, 1)
            _bn(out, f"{p}.7", cout)
            cin = cout
    _conv(out, "conv2.0", 1280, cin, 1)
    _bn(out, "conv2.1", 1280)
    _linear(out, "classifier.0", 1280)
    return out


def _layout_shufflev1() -> dict:
    out: dict = {}
    _conv(out, "conv1", 24, 3, 1)
    _bn(out, "bn1", 24)
    cin = 24
    for s, (planes, n) in enumerate(zip((240, 480, 960), (4, 8, 4), strict=True), start=1):
        for i in range(n):
            o = planes - (cin if i == 0 else 0)
            mid, g, p = o // 4, 1 if cin == 24 else 3, f"layer{s}.{i}"
            _conv(out, f"{p}.conv1", mid, cin, 1, groups=g)
            _bn(out, f"{p}.bn1", mid)
            _conv(out, f"{p}.conv2", mid, mid, 3, groups=mid)
            _bn(out, f"{p}.bn2", mid)
            _conv(out, f"{p}.conv3", o, mid, 1, groups=3)
            _bn(out, f"{p}.bn3", o)
            cin = planes
    _linear(out, "linear", 960)
    return out


def _layout_shufflev2() -> dict:
    out: dict = {}
    _conv(out, "conv1", 24, 3, 1)
    _bn(out, "bn1", 24)
    cin = 24
    for s, (oc, n) in enumerate(zip((116, 232, 464), (3, 7, 3), strict=True), start=1):
        mid, p = oc // 2, f"layer{s}.0"
        _conv(out, f"{p}.conv1", cin, cin, 3, groups=cin)
        _bn(out, f"{p}.bn1", cin)
        _conv(out, f"{p}.conv2", mid, cin, 1)
        _bn(out, f"{p}.bn2", mid)
        _conv(out, f"{p}.conv3", mid, cin, 1)
        _bn(out, f"{p}.bn3", mid)
        _conv(out, f"{p}.conv4", mid, mid, 3, groups=mid)
        _bn(out, f"{p}.bn4", mid)
        _conv(out, f"{p}.conv5", mid, mid, 1)
        _bn(out, f"{p}.bn5", mid)
        for i in range(1, n + 1):
            p = f"layer{s}.{i}"
            _conv(out, f"{p}.conv1", mid, mid, 1)
            _bn(out, f"{p}.bn1", mid)
            _conv(out, f"{p}.conv2", mid, mid, 3, groups=mid)
            _bn(out, f"{p}.bn2", mid)
            _conv(out, f"{p}.conv3", mid, mid, 1)
            _bn(out, f"{p}.bn3", mid)
        cin = oc
    _conv(out, "conv2", 1024, 464, 1)
    _bn(out, "bn2", 1024)
    _linear(out, "linear", 1024)
    return out


def _published_layout(name: str) -> dict:
    arch = name.removeprefix("cifar_")
    if arch.startswith("wrn_"):
        _, d, k = arch.split("_")
        return _layout_wrn(int(d), int(k))
    if arch.startswith("vgg"):
        return _layout_vgg(int(arch[3:]))
    if arch == "mobilenetv2":
        return _layout_mobile_half()
    if arch == "shufflev1":
        return _layout_shufflev1()
    if arch == "shufflev2":
        return _layout_shufflev2()
    if arch in ("resnet18", "resnet34", "resnet50"):
        counts = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3), "resnet50": (3, 4, 6, 3)}[arch]
        return _layout_resnetv2(arch == "resnet50", counts)
    if arch.endswith("x4"):
        return _layout_resnet(int(arch[6:-2]), (32, 64, 128, 256))
    return _layout_resnet(int(arch[6:]), (16, 16, 32, 64))


def _param_count(layout: dict) -> int:
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    return sum(math.prod(shape) for key, shape in layout.items() if not key.endswith(buffers))


# Exact parameter counts (100 classes) of the published layouts above. Rounded to 0.01M they are the
# figures KD papers quote for these models (resnet8x4 1.23M, resnet32x4 7.43M, wrn_40_2 2.26M,
# resnet56 0.86M, resnet20 0.28M, vgg13 9.46M, MobileNetV2 0.81M, ShuffleV1 0.95M, ShuffleV2 1.36M).
PARAM_COUNTS = {
    "cifar_resnet8": 83_892,
    "cifar_resnet14": 181_108,
    "cifar_resnet20": 278_324,
    "cifar_resnet32": 472_756,
    "cifar_resnet44": 667_188,
    "cifar_resnet56": 861_620,
    "cifar_resnet110": 1_736_564,
    "cifar_resnet8x4": 1_233_540,
    "cifar_resnet32x4": 7_433_860,
    "cifar_wrn_16_1": 180_916,
    "cifar_wrn_16_2": 703_284,
    "cifar_wrn_40_1": 569_780,
    "cifar_wrn_40_2": 2_255_156,
    "cifar_vgg8": 3_965_028,
    "cifar_vgg11": 9_277_284,
    "cifar_vgg13": 9_462_180,
    "cifar_vgg16": 14_774_436,
    "cifar_vgg19": 20_086_692,
    "cifar_mobilenetv2": 812_836,
    "cifar_shufflev1": 949_258,
    "cifar_shufflev2": 1_355_528,
    "cifar_resnet18": 11_220_132,
    "cifar_resnet34": 21_328_292,
    "cifar_resnet50": 23_705_252,
}

# Hand-read facts from the published code: (model, key, shape), and state-dict entry counts.
SPOT_KEYS = [
    ("cifar_resnet8x4", "conv1.weight", (32, 3, 3, 3)),
    ("cifar_resnet8x4", "layer1.0.downsample.0.weight", (64, 32, 1, 1)),
    ("cifar_resnet8x4", "layer3.0.conv2.weight", (256, 256, 3, 3)),
    ("cifar_resnet8x4", "fc.weight", (100, 256)),
    ("cifar_resnet32x4", "layer3.4.bn2.running_var", (256,)),
    ("cifar_resnet56", "layer3.8.conv2.weight", (64, 64, 3, 3)),
    ("cifar_resnet56", "fc.weight", (100, 64)),
    ("cifar_wrn_40_2", "block1.layer.0.convShortcut.weight", (32, 16, 1, 1)),
    ("cifar_wrn_40_2", "block3.layer.5.conv2.weight", (128, 128, 3, 3)),
    ("cifar_wrn_40_2", "bn1.weight", (128,)),
    ("cifar_wrn_40_2", "fc.weight", (100, 128)),
    ("cifar_vgg13", "block0.0.bias", (64,)),
    ("cifar_vgg13", "block0.3.weight", (64, 64, 3, 3)),
    ("cifar_vgg13", "block4.4.running_mean", (512,)),
    ("cifar_vgg13", "classifier.weight", (100, 512)),
    ("cifar_mobilenetv2", "conv1.0.weight", (16, 3, 3, 3)),
    ("cifar_mobilenetv2", "blocks.0.0.conv.0.weight", (16, 16, 1, 1)),
    ("cifar_mobilenetv2", "blocks.6.0.conv.6.weight", (160, 480, 1, 1)),
    ("cifar_mobilenetv2", "conv2.0.weight", (1280, 160, 1, 1)),
    ("cifar_mobilenetv2", "classifier.0.weight", (100, 1280)),
    ("cifar_shufflev1", "layer1.0.conv1.weight", (54, 24, 1, 1)),
    ("cifar_shufflev1", "layer1.0.conv3.weight", (216, 18, 1, 1)),
    ("cifar_shufflev1", "layer2.0.conv1.weight", (60, 80, 1, 1)),
    ("cifar_shufflev1", "linear.weight", (100, 960)),
    ("cifar_shufflev2", "layer1.0.conv1.weight", (24, 1, 3, 3)),
    ("cifar_shufflev2", "layer1.3.conv3.weight", (58, 58, 1, 1)),
    ("cifar_shufflev2", "conv2.weight", (1024, 464, 1, 1)),
    ("cifar_shufflev2", "linear.weight", (100, 1024)),
    ("cifar_resnet18", "layer2.0.shortcut.0.weight", (128, 64, 1, 1)),
    ("cifar_resnet50", "layer1.0.shortcut.0.weight", (256, 64, 1, 1)),
    ("cifar_resnet50", "layer4.2.conv3.weight", (2048, 512, 1, 1)),
    ("cifar_resnet50", "linear.weight", (100, 2048)),
]
# conv: 1 entry, conv with bias: 2, BN: 5, linear: 2.
STATE_DICT_ENTRIES = {
    # stem conv+BN (6) + 3 blocks x 2 (conv+BN) (36) + 2 projections (12) + fc (2)
    "cifar_resnet8": 56,
    # as resnet8 plus the stride-1 projection of layer1.0
    "cifar_resnet8x4": 62,
    # 5 blocks x (conv2d+bias, BN) x 1 conv each = 5 x 7, + classifier
    "cifar_vgg8": 37,
    # 1 stem + 17 blocks x (3 conv + 3 BN) + conv2 + BN + linear: 6 + 17 * 18 + 6 + 2
    "cifar_mobilenetv2": 320,
}


def test_every_name_is_registered():
    assert set(CIFAR_MODELS) == EXPECTED_NAMES
    assert set(timm.list_models("cifar_*")) >= EXPECTED_NAMES


@pytest.mark.parametrize("name", sorted(EXPECTED_NAMES))
def test_state_dict_matches_published_layout(name):
    with torch.device("meta"):
        model = timm.create_model(name, num_classes=100)
    actual = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert actual == _published_layout(name)
    assert sum(p.numel() for p in model.parameters()) == PARAM_COUNTS[name] == _param_count(actual)


def test_spot_keys_and_entry_counts():
    layouts = {name: _published_layout(name) for name in EXPECTED_NAMES}
    for name, key, shape in SPOT_KEYS:
        assert layouts[name][key] == shape, (name, key)
    for name, entries in STATE_DICT_ENTRIES.items():
        assert len(layouts[name]) == entries, name
    rounded = {
        "cifar_resnet8x4": 1.23,
        "cifar_resnet32x4": 7.43,
        "cifar_wrn_40_2": 2.26,
        "cifar_resnet56": 0.86,
        "cifar_resnet20": 0.28,
        "cifar_vgg13": 9.46,
        "cifar_mobilenetv2": 0.81,
        "cifar_shufflev1": 0.95,
        "cifar_shufflev2": 1.36,
    }
    for name, millions in rounded.items():
        assert round(_param_count(layouts[name]) / 1e6, 2) == millions, name


@pytest.mark.parametrize("depth", [18, 34, 50])
def test_cifar_resnet_v2_matches_torchvision_but_the_stem(depth):
    """CRD's ResNet18/34/50 = torchvision's with a 3x3 stride-1 stem and no max-pool."""
    torchvision = pytest.importorskip("torchvision")
    with torch.device("meta"):
        reference = getattr(torchvision.models, f"resnet{depth}")(num_classes=100)
        ours = timm.create_model(f"cifar_resnet{depth}")
    renamed = {
        k.replace(".downsample.", ".shortcut.").replace("fc.", "linear."): tuple(v.shape)
        for k, v in reference.state_dict().items()
    }
    renamed["conv1.weight"] = (64, 3, 3, 3)
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == renamed


# ---------------------------------------------------------------------------------------------
# The published forward pass, recomputed from a state dict.
# ---------------------------------------------------------------------------------------------
def _c(sd: dict, key: str, x: torch.Tensor, stride: int = 1) -> torch.Tensor:
    w = sd[f"{key}.weight"]
    return F.conv2d(x, w, sd.get(f"{key}.bias"), stride, w.shape[-1] // 2, 1, x.shape[1] // w.shape[1])


def _b(sd: dict, key: str, x: torch.Tensor) -> torch.Tensor:
    return F.batch_norm(
        x, sd[f"{key}.running_mean"], sd[f"{key}.running_var"], sd[f"{key}.weight"], sd[f"{key}.bias"]
    )


def _fc(sd: dict, key: str, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x.reshape(x.shape[0], -1), sd[f"{key}.weight"], sd[f"{key}.bias"])


def _shuffle(x: torch.Tensor, g: int) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.reshape(n, g, c // g, h, w).permute(0, 2, 1, 3, 4).reshape(n, c, h, w)


def _reference_resnet(sd, x, n):
    x = F.relu(_b(sd, "bn1", _c(sd, "conv1", x)))
    for s in (1, 2, 3):
        for b in range(n):
            p, stride = f"layer{s}.{b}", 2 if (s > 1 and b == 0) else 1
            out = F.relu(_b(sd, f"{p}.bn1", _c(sd, f"{p}.conv1", x, stride)))
            out = _b(sd, f"{p}.bn2", _c(sd, f"{p}.conv2", out))
            if f"{p}.downsample.0.weight" in sd:
                x = _b(sd, f"{p}.downsample.1", _c(sd, f"{p}.downsample.0", x, stride))
            x = F.relu(out + x)
    return _fc(sd, "fc", F.avg_pool2d(x, 8))


def _reference_resnetv2(sd, x, counts, bottleneck):
    x = F.relu(_b(sd, "bn1", _c(sd, "conv1", x)))
    for s, n in enumerate(counts, start=1):
        for b in range(n):
            p, stride = f"layer{s}.{b}", 2 if (s > 1 and b == 0) else 1
            if bottleneck:
                out = F.relu(_b(sd, f"{p}.bn1", _c(sd, f"{p}.conv1", x)))
                out = F.relu(_b(sd, f"{p}.bn2", _c(sd, f"{p}.conv2", out, stride)))
                out = _b(sd, f"{p}.bn3", _c(sd, f"{p}.conv3", out))
            else:
                out = F.relu(_b(sd, f"{p}.bn1", _c(sd, f"{p}.conv1", x, stride)))
                out = _b(sd, f"{p}.bn2", _c(sd, f"{p}.conv2", out))
            if f"{p}.shortcut.0.weight" in sd:
                x = _b(sd, f"{p}.shortcut.1", _c(sd, f"{p}.shortcut.0", x, stride))
            x = F.relu(out + x)
    return _fc(sd, "linear", F.adaptive_avg_pool2d(x, 1))


def _reference_wrn(sd, x, n):
    x = _c(sd, "conv1", x)
    for s in (1, 2, 3):
        for i in range(n):
            p, stride = f"block{s}.layer.{i}", 2 if (s > 1 and i == 0) else 1
            equal = f"{p}.convShortcut.weight" not in sd
            act = F.relu(_b(sd, f"{p}.bn1", x))
            if not equal:
                x = act
            out = F.relu(_b(sd, f"{p}.bn2", _c(sd, f"{p}.conv1", act, stride)))
            out = _c(sd, f"{p}.conv2", out)
            x = (x if equal else _c(sd, f"{p}.convShortcut", x, stride)) + out
    x = F.relu(_b(sd, "bn1", x))
    return _fc(sd, "fc", F.avg_pool2d(x, 8))


def _reference_vgg(sd, x, depth):
    h = x.shape[2]
    for b, widths in enumerate(_VGG_CFG[depth]):
        for j in range(len(widths)):
            x = _b(sd, f"block{b}.{3 * j + 1}", _c(sd, f"block{b}.{3 * j}", x))
            if j < len(widths) - 1:
                x = F.relu(x)
        x = F.relu(x)
        if b < 3 or (b == 3 and h == 64):
            x = F.max_pool2d(x, 2, 2)
    return _fc(sd, "classifier", F.adaptive_avg_pool2d(x, 1))


def _reference_mobile_half(sd, x):
    x = F.relu(_b(sd, "conv1.1", _c(sd, "conv1.0", x, 2)))
    cin = 16
    for i, (_t, c, n, s) in enumerate(_MOBILE_SETTING):
        for j in range(n):
            p, stride, cout = f"blocks.{i}.{j}.conv", s if j == 0 else 1, int(c * 0.5)
            out = F.relu(_b(sd, f"{p}.1", _c(sd, f"{p}.0", x)))
            out = F.relu(_b(sd, f"{p}.4", _c(sd, f"{p}.3", out, stride)))
            out = _b(sd, f"{p}.7", _c(sd, f"{p}.6", out))
            x = x + out if (stride == 1 and cin == cout) else out
            cin = cout
    x = F.relu(_b(sd, "conv2.1", _c(sd, "conv2.0", x)))
    return _fc(sd, "classifier.0", F.avg_pool2d(x, 2, ceil_mode=True))


def _reference_shufflev1(sd, x):
    x = F.relu(_b(sd, "bn1", _c(sd, "conv1", x)))
    cin = 24
    for s, n in enumerate((4, 8, 4), start=1):
        for i in range(n):
            p, stride, g = f"layer{s}.{i}", 2 if i == 0 else 1, 1 if cin == 24 else 3
            out = F.relu(_b(sd, f"{p}.bn1", _c(sd, f"{p}.conv1", x)))
            out = _shuffle(out, g)
            out = F.relu(_b(sd, f"{p}.bn2", _c(sd, f"{p}.conv2", out, stride)))
            out = _b(sd, f"{p}.bn3", _c(sd, f"{p}.conv3", out))
            x = F.relu(torch.cat([out, F.avg_pool2d(x, 3, 2, 1)], 1) if stride == 2 else out + x)
            cin = x.shape[1]
    return _fc(sd, "linear", F.avg_pool2d(x, 4))


def _reference_shufflev2(sd, x):
    x = F.relu(_b(sd, "bn1", _c(sd, "conv1", x)))
    for s, n in enumerate((3, 7, 3), start=1):
        p = f"layer{s}.0"
        left = _b(sd, f"{p}.bn1", _c(sd, f"{p}.conv1", x, 2))
        left = F.relu(_b(sd, f"{p}.bn2", _c(sd, f"{p}.conv2", left)))
        right = F.relu(_b(sd, f"{p}.bn3", _c(sd, f"{p}.conv3", x)))
        right = _b(sd, f"{p}.bn4", _c(sd, f"{p}.conv4", right, 2))
        right = F.relu(_b(sd, f"{p}.bn5", _c(sd, f"{p}.conv5", right)))
        x = _shuffle(torch.cat([left, right], 1), 2)
        for i in range(1, n + 1):
            p, half = f"layer{s}.{i}", x.shape[1] // 2
            keep, out = x[:, :half], x[:, half:]
            out = F.relu(_b(sd, f"{p}.bn1", _c(sd, f"{p}.conv1", out)))
            out = _b(sd, f"{p}.bn2", _c(sd, f"{p}.conv2", out))
            out = F.relu(_b(sd, f"{p}.bn3", _c(sd, f"{p}.conv3", out)))
            x = _shuffle(torch.cat([keep, out], 1), 2)
    x = F.relu(_b(sd, "bn2", _c(sd, "conv2", x)))
    return _fc(sd, "linear", F.avg_pool2d(x, 4))


_REFERENCES = {
    "cifar_resnet8": lambda sd, x: _reference_resnet(sd, x, 1),
    "cifar_resnet8x4": lambda sd, x: _reference_resnet(sd, x, 1),
    "cifar_wrn_16_1": lambda sd, x: _reference_wrn(sd, x, 2),
    "cifar_wrn_16_2": lambda sd, x: _reference_wrn(sd, x, 2),
    "cifar_vgg8": lambda sd, x: _reference_vgg(sd, x, 8),
    "cifar_vgg13": lambda sd, x: _reference_vgg(sd, x, 13),
    "cifar_mobilenetv2": _reference_mobile_half,
    "cifar_shufflev1": _reference_shufflev1,
    "cifar_shufflev2": _reference_shufflev2,
    "cifar_resnet18": lambda sd, x: _reference_resnetv2(sd, x, (2, 2, 2, 2), False),
    "cifar_resnet50": lambda sd, x: _reference_resnetv2(sd, x, (3, 4, 6, 3), True),
}


def _randomize_bn(model: nn.Module) -> None:
    """Non-trivial BN statistics and affine parameters, so that every BN placement matters."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(c, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(c, generator=gen) * 0.1)


@pytest.mark.parametrize("name", sorted(_REFERENCES))
def test_forward_is_the_published_function(name):
    model = _model(name).eval()
    _randomize_bn(model)
    sd = model.state_dict()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours, reference = model(x), _REFERENCES[name](sd, x)
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-4)
    if name == "cifar_vgg8":  # the published VGG max-pools after block3 only on 64x64 inputs
        x64 = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            torch.testing.assert_close(model(x64), _REFERENCES[name](sd, x64), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# The timm interface.
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(EXPECTED_NAMES))
def test_timm_interface_forward_backward(name):
    model = _model(name).train()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    logits = model(x)
    assert logits.shape == (2, 100)
    logits.logsumexp(1).mean().backward()
    assert all(p.grad is not None for p in model.parameters())

    head = model.get_classifier()
    assert isinstance(head, nn.Linear)
    assert head.out_features == model.num_classes == 100
    assert head.in_features == model.num_features

    assert len(model.feature_info) == type(model).feature_levels
    seen: dict[str, torch.Tensor] = {}
    handles = [
        model.get_submodule(info["module"]).register_forward_hook(
            lambda _m, _i, out, key=info["module"]: seen.__setitem__(key, out.detach().clone())
        )
        for info in model.feature_info
    ]
    model.eval()
    try:
        with torch.no_grad():
            feats = model.forward_features(x)
            pooled = model.forward_head(feats, pre_logits=True)
            assert torch.equal(model.forward_head(feats), model(x))
    finally:
        for handle in handles:
            handle.remove()
    assert feats.ndim == 4 and feats.shape[:2] == (2, model.num_features)
    assert pooled.shape == (2, model.num_features)
    reductions = [info["reduction"] for info in model.feature_info]
    assert reductions == sorted(reductions)
    for info in model.feature_info:
        out = seen[info["module"]]
        assert out.shape[1] == info["num_chs"], info
        assert 32 // out.shape[-1] == info["reduction"], info


def test_pretrained_cfg_describes_cifar100():
    for name in EXPECTED_NAMES:
        cfg = timm.get_pretrained_cfg(name).to_dict()
        assert cfg["num_classes"] == 100 and cfg["input_size"] == (3, 32, 32), name
        assert tuple(cfg["mean"]) == CIFAR100_MEAN and tuple(cfg["std"]) == CIFAR100_STD, name
    for name in REPRESENTATIVES:
        with torch.device("meta"):
            model = timm.create_model(name)
        cfg = model.pretrained_cfg
        assert isinstance(model.get_submodule(cfg["first_conv"]), nn.Conv2d)
        assert model.get_submodule(cfg["classifier"]) is model.get_classifier()
        assert timm.data.resolve_data_config(model=model)["input_size"] == (3, 32, 32)


@pytest.mark.parametrize("name", ["cifar_resnet8", "cifar_mobilenetv2", "cifar_vgg8"])
def test_reset_classifier(name):
    model = timm.create_model(name, num_classes=100).eval()
    x = torch.randn(2, 3, 32, 32)
    model.reset_classifier(10)
    assert isinstance(model.get_classifier(), nn.Linear) and model.num_classes == 10
    assert model(x).shape == (2, 10)
    model.reset_classifier(0)
    assert isinstance(model.get_classifier(), nn.Identity)
    assert model(x).shape == (2, model.num_features)
    headless = timm.create_model(name, num_classes=0)
    assert all(not k.startswith(headless.pretrained_cfg["classifier"] + ".") for k in headless.state_dict())


def test_drop_rate_and_unknown_kwargs():
    model = timm.create_model("cifar_resnet8", drop_rate=0.5).train()
    x = torch.randn(4, 3, 32, 32)
    torch.manual_seed(0)
    first = model(x)
    torch.manual_seed(1)
    assert not torch.equal(first, model(x))
    with pytest.raises(TypeError):
        timm.create_model("cifar_resnet8", drop_path_rate=0.1)


@pytest.mark.parametrize(
    "name",
    ["cifar_resnet8", "cifar_wrn_16_1", "cifar_vgg8", "cifar_mobilenetv2"]
    + ["cifar_shufflev1", "cifar_shufflev2", "cifar_resnet18"],
)
def test_grey_input(name):
    model = timm.create_model(name, in_chans=1, num_classes=10).eval()
    assert model.get_submodule(model.pretrained_cfg["first_conv"]).in_channels == 1
    with torch.no_grad():
        assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)  # Fashion-MNIST sized


def test_features_only():
    model = timm.create_model("cifar_resnet8x4", features_only=True)
    maps = model(torch.randn(2, 3, 32, 32))
    assert [tuple(m.shape[1:]) for m in maps] == [(32, 32, 32), (64, 32, 32), (128, 16, 16), (256, 8, 8)]
    assert model.feature_info.channels() == [32, 64, 128, 256]


# ---------------------------------------------------------------------------------------------
# Weights: state-dict round trip and local files through timm's pretrained loader.
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["cifar_resnet8", "cifar_wrn_16_1", "cifar_vgg8", "cifar_mobilenetv2"])
def test_state_dict_round_trip(name, tmp_path):
    source = _model(name).eval()
    _randomize_bn(source)
    torch.save(source.state_dict(), tmp_path / "weights.pt")
    copy = timm.create_model(name, num_classes=100)
    copy.load_state_dict(torch.load(tmp_path / "weights.pt", weights_only=True), strict=True)
    copy.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(source(x), copy(x))


def _same_weights(a: nn.Module, b: nn.Module, skip: str = "") -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    keys = [k for k in sa if not (skip and k.startswith(skip))]
    return all(torch.equal(sa[k], sb[k]) for k in keys)


def test_pretrained_overlay_loads_a_local_safetensors_file(tmp_path):
    torch.manual_seed(0)
    student = timm.create_model("cifar_resnet8", num_classes=10)
    path = tmp_path / "student.safetensors"
    save_file({k: v.contiguous() for k, v in student.state_dict().items()}, str(path))

    loaded = timm.create_model(
        "cifar_resnet8", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), num_classes=10
    )
    assert _same_weights(student, loaded)

    # The class count is read from the file when not given ...
    implicit = timm.create_model(
        "cifar_resnet8", pretrained=True, pretrained_cfg_overlay=dict(file=str(path))
    )
    assert implicit.num_classes == 10 and _same_weights(student, implicit)

    # ... and another class count keeps the trunk and starts a new head, as timm does.
    other = timm.create_model(
        "cifar_resnet8", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), num_classes=100
    )
    assert other.get_classifier().out_features == 100
    assert _same_weights(student, other, skip="fc.")

    # A grey model from RGB weights: timm folds the stem conv over the input channels.
    grey = timm.create_model(
        "cifar_resnet8", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), in_chans=1
    )
    torch.testing.assert_close(grey.conv1.weight, student.conv1.weight.sum(1, keepdim=True))


def test_pretrained_overlay_loads_a_crd_checkpoint(tmp_path):
    """The published teachers are ``ckpt_epoch_240.pth`` files holding ``{"model": state_dict, ...}``."""
    torch.manual_seed(0)
    teacher = timm.create_model("cifar_wrn_16_2")
    path = tmp_path / "ckpt_epoch_240.pth"
    torch.save({"epoch": 240, "model": teacher.state_dict(), "accuracy": 73.3}, path)
    loaded = timm.create_model("cifar_wrn_16_2", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert _same_weights(teacher, loaded)


def test_pretrained_without_weights_fails():
    with pytest.raises(RuntimeError):
        timm.create_model("cifar_resnet8", pretrained=True)
