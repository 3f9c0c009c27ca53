"""Tests for dfcil.models: backbones, the incremental classifier and frozen copies."""

from __future__ import annotations

import copy
import hashlib
import json

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from dfcil.config import config_to_dict, drop_later_defaults, fingerprint, parse_config
from dfcil.models import (
    BACKBONES,
    IncrementalClassifier,
    ModelOutput,
    build_backbone,
    frozen_copy,
    resnet18,
    resnet32,
    resnet34_cifar,
)
from dfcil.models.blocks import BasicBlock, OptionAShortcut

# Hand count of ResNet-32 parameters (convs are bias-free, each BN has 2*C):
#   stem   3*16*9 + 2*16                                      =     464
#   stage1 5 * (2*16*16*9 + 2*2*16)                           =  23,360
#   stage2 (16*32*9 + 32*32*9 + 4*32) + 4*(2*32*32*9 + 4*32)  =  88,192
#   stage3 (32*64*9 + 64*64*9 + 4*64) + 4*(2*64*64*9 + 4*64)  = 351,488
#   total                                                     = 463,504
RESNET32_PARAMS = 463_504


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _randomise_bn(module: nn.Module, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for sub in module.modules():
            if isinstance(sub, nn.BatchNorm2d):
                sub.weight.copy_(torch.randn(sub.weight.shape, generator=generator))
                sub.bias.copy_(torch.randn(sub.bias.shape, generator=generator))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# ----------------------------------------------------------------------------- ResNet-32


@pytest.mark.parametrize("variant", ["rdfcil", "abd"])
def test_resnet32_parameter_count_and_shape(variant: str) -> None:
    model = resnet32(variant=variant)  # type: ignore[arg-type]
    assert _count(model) == RESNET32_PARAMS
    assert abs(_count(model) - 0.46e6) / 0.46e6 < 0.01
    assert model.feature_dim == 64
    out = model(torch.randn(3, 3, 32, 32))
    assert out.shape == (3, 64)


def test_resnet32_structure() -> None:
    model = resnet32()
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == 15
    assert [b.conv1.stride[0] for b in blocks].count(2) == 2
    stem_conv = model.stem[0]
    assert isinstance(stem_conv, nn.Conv2d)
    assert (stem_conv.in_channels, stem_conv.out_channels, stem_conv.kernel_size) == (3, 16, (3, 3))
    assert stem_conv.bias is None
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())


class _ReluCounter(TorchDispatchMode):
    """Counts the ReLU kernels a forward runs (functional, in-place and module ReLUs alike)."""

    RELUS = (torch.ops.aten.relu.default, torch.ops.aten.relu_.default)

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if func in self.RELUS:
            self.count += 1
        return func(*args, **(kwargs or {}))


def _relus_per_forward(model: nn.Module) -> int:
    with _ReluCounter() as counter:
        model(torch.randn(2, 3, 32, 32))
    return counter.count


def test_rdfcil_network_applies_16_relus_like_the_authors_code() -> None:
    # R-DFCIL's code (cl-lite resnet32 = PODNet's CifarResNet, last_relu=False): stem ReLU + the
    # ReLU inside each of the 15 blocks, none after any residual addition or between blocks.
    assert _relus_per_forward(resnet32("rdfcil")) == 16
    # ABD's code keeps a ReLU after every addition: 1 + 15 * 2.
    assert _relus_per_forward(resnet32("abd")) == 31
    # the counter sees both kinds of ReLU (a module and the functional one) and counts each call
    assert _relus_per_forward(nn.Sequential(nn.ReLU(inplace=True), nn.Flatten(), nn.ReLU())) == 2


def test_rdfcil_blocks_have_no_relu_after_the_residual_addition() -> None:
    rd_blocks = [m for m in resnet32("rdfcil").modules() if isinstance(m, BasicBlock)]
    abd_blocks = [m for m in resnet32("abd").modules() if isinstance(m, BasicBlock)]
    assert not any(b.final_relu for b in rd_blocks)
    assert all(b.final_relu for b in abd_blocks)
    # the sum a block returns can be negative: x + bn2(...) with bn2 shifting it below zero
    block = rd_blocks[0].eval()
    with torch.no_grad():
        block.bn2.weight.fill_(1.0)
        block.bn2.bias.fill_(-10.0)
        assert (block(torch.rand(1, 16, 8, 8)) < 0).all()


def test_network_revision_enters_the_fingerprint_of_rdfcil_configs_only() -> None:
    rd = parse_config({"model": {"resnet32_variant": "rdfcil"}})
    abd = parse_config({"model": {"resnet32_variant": "abd"}})
    assert rd.model.network_revision == 2
    assert abd.model.network_revision == 1
    # revision 1 adds nothing: fingerprints of every other network are what they were (as are keys
    # added later at their defaults: test_config.py's golden fingerprints)
    data = drop_later_defaults(config_to_dict(abd))
    data.pop("runtime")
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    assert fingerprint(abd) == hashlib.sha256(canonical.encode()).hexdigest()[:16]
    data = drop_later_defaults(config_to_dict(rd))
    data.pop("runtime")
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    assert fingerprint(rd) != hashlib.sha256(canonical.encode()).hexdigest()[:16]


def test_rdfcil_features_can_be_negative_abd_cannot() -> None:
    x = torch.randn(8, 3, 32, 32)
    rd, abd = resnet32("rdfcil"), resnet32("abd")
    # With zero-initialised residual gammas the rdfcil net is its shortcut path at
    # init (non-negative); perturb BN to emulate a trained network.
    _randomise_bn(rd)
    _randomise_bn(abd)
    assert (rd(x) < 0).any()
    assert (abd(x) >= 0).all()


def test_bn_init_per_variant() -> None:
    for block in (m for m in resnet32("rdfcil").modules() if isinstance(m, BasicBlock)):
        assert torch.count_nonzero(block.bn2.weight) == 0
        assert torch.all(block.bn1.weight == 1)
    for bn in (m for m in resnet32("abd").modules() if isinstance(m, nn.BatchNorm2d)):
        assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)


def test_conv_init_is_kaiming_fan_out() -> None:
    conv = resnet32("abd").stages[2][-1].conv2
    fan_out = conv.out_channels * 3 * 3
    expected = (2.0 / fan_out) ** 0.5
    assert conv.weight.std().item() == pytest.approx(expected, rel=0.05)


def test_option_a_shortcut_is_parameter_free_and_correct() -> None:
    model = resnet32()
    shortcuts = [m for m in model.modules() if isinstance(m, OptionAShortcut)]
    assert len(shortcuts) == 2
    assert all(_count(s) == 0 and not list(s.buffers()) for s in shortcuts)
    x = torch.randn(2, 16, 8, 8)
    y = OptionAShortcut(16, 32, stride=2)(x)
    assert y.shape == (2, 32, 4, 4)
    torch.testing.assert_close(y[:, :16], x[:, :, ::2, ::2])
    assert torch.all(y[:, 16:] == 0)


def test_unknown_variant_raises() -> None:
    with pytest.raises(ValueError, match="variant"):
        resnet32("podnet")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- ResNet-18 / 34


@pytest.mark.parametrize(("stem", "size"), [("imagenet", 64), ("imagenet", 224), ("small", 64)])
def test_resnet18_stems(stem: str, size: int) -> None:
    model = resnet18(stem=stem).eval()  # type: ignore[arg-type]
    assert model.feature_dim == 512
    with torch.no_grad():
        assert model(torch.randn(2, 3, size, size)).shape == (2, 512)
    conv = model.stem[0]
    if stem == "imagenet":
        assert (conv.kernel_size, conv.stride) == ((7, 7), (2, 2))
    else:
        assert (conv.kernel_size, conv.stride) == ((3, 3), (1, 1))
    assert isinstance(model.stem[-1], nn.MaxPool2d)
    # torchvision's resnet18 without its fc layer has 11,176,512 parameters.
    expected = 11_176_512 if stem == "imagenet" else 11_176_512 - 64 * 3 * (49 - 9)
    assert _count(model) == expected


def test_resnet18_unknown_stem_raises() -> None:
    with pytest.raises(ValueError, match="stem"):
        resnet18(stem="cifar")  # type: ignore[arg-type]


def test_resnet34_cifar() -> None:
    model = resnet34_cifar().eval()
    assert model.feature_dim == 512
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 512)
    assert [len(stage) for stage in model.stages] == [3, 4, 6, 3]
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    assert (model.stem[0].kernel_size, model.stem[0].stride) == ((3, 3), (1, 1))
    # Projection shortcuts (1x1 conv + BN) in the first block of stages 2-4.
    projections = [b.shortcut for b in model.modules() if isinstance(b, BasicBlock)]
    assert sum(isinstance(s, nn.Sequential) for s in projections) == 3
    # torchvision resnet34 minus fc (21,284,672) with a 3x3 instead of 7x7 stem.
    assert _count(model) == 21_284_672 - 64 * 3 * (49 - 9)


def test_registry_and_build_backbone() -> None:
    assert set(BACKBONES) == {"resnet32", "resnet18", "resnet34"}
    assert build_backbone("resnet32", variant="abd").feature_dim == 64
    assert build_backbone("resnet18", stem="small").feature_dim == 512
    assert build_backbone("resnet34").feature_dim == 512
    with pytest.raises(ValueError, match="resnet18, resnet32, resnet34"):
        build_backbone("vit")
    with pytest.raises(TypeError):
        BACKBONES["x"] = resnet32  # type: ignore[index]


# ----------------------------------------------------------------------------- IncrementalClassifier


def _classifier(head_init_std: float | None = None) -> IncrementalClassifier:
    model = IncrementalClassifier(resnet32("abd"), head_init_std=head_init_std)
    model.add_head(5)
    model.add_head(3)
    return model.eval()


def test_heads_and_offsets() -> None:
    model = IncrementalClassifier(resnet32())
    assert (model.num_tasks, model.num_classes, model.task_offsets) == (0, 0, [0])
    with pytest.raises(RuntimeError):
        model.classify(torch.randn(2, 64))
    head = model.add_head(5)
    assert isinstance(head, nn.Linear) and head.bias is None
    model.add_head(3)
    assert model.num_tasks == 2
    assert model.num_classes == 8
    assert model.task_offsets == [0, 5, 8]
    assert model.head_sizes == [5, 3]
    assert all(h.bias is None for h in model.heads)
    with pytest.raises(ValueError):
        model.add_head(0)


def test_forward_and_local_logits() -> None:
    model = _classifier()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        out = model(x)
    assert isinstance(out, ModelOutput)
    assert out.features.shape == (4, 64)
    assert out.logits.shape == (4, 8)
    torch.testing.assert_close(out.features, model.features(x))
    with torch.no_grad():
        torch.testing.assert_close(out.logits, model.classify(out.features))
        head0, head1 = model.heads[0](out.features), model.heads[1](out.features)
    torch.testing.assert_close(model.local_logits(out.logits, 0), out.logits[:, :5])
    torch.testing.assert_close(model.local_logits(out.logits, 0), head0)
    torch.testing.assert_close(model.local_logits(out.logits), out.logits[:, 5:8])
    torch.testing.assert_close(model.local_logits(out.logits, 1), head1)
    with pytest.raises(IndexError):
        model.local_logits(out.logits, 2)
    with pytest.raises(ValueError):
        model.local_logits(out.logits[:, :5], 0)


def test_parameter_groups() -> None:
    model = _classifier()
    heads = list(model.head_parameters())
    backbone = list(model.backbone_parameters())
    assert len(heads) == 2
    assert _count(model) == sum(p.numel() for p in heads + backbone)
    assert {id(p) for p in heads}.isdisjoint(id(p) for p in backbone)


def test_head_init_std() -> None:
    model = IncrementalClassifier(resnet32(), head_init_std=0.001)
    head = model.add_head(100)  # 6,400 weights
    assert head.weight.std().item() == pytest.approx(0.001, rel=0.05)
    assert abs(head.weight.mean().item()) < 1e-4
    default = IncrementalClassifier(resnet32()).add_head(100)
    bound = 1 / 64**0.5  # PyTorch default: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert default.weight.abs().max().item() <= bound
    assert default.weight.std().item() > 0.05


def test_add_head_follows_dtype() -> None:
    model = IncrementalClassifier(resnet32()).to(torch.float64)
    assert model.add_head(2).weight.dtype == torch.float64


def test_state_dict_round_trip() -> None:
    model = _classifier(head_init_std=0.001)
    fresh = IncrementalClassifier(resnet32("abd"), head_init_std=0.001)
    fresh.add_head(5)
    fresh.add_head(3)
    fresh.load_state_dict(model.state_dict())
    fresh.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        a, b = model(x), fresh(x)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.features, b.features)
    wrong = IncrementalClassifier(resnet32("abd"))
    wrong.add_head(5)
    with pytest.raises(RuntimeError):
        wrong.load_state_dict(model.state_dict())


def test_backbone_without_feature_dim_rejected() -> None:
    with pytest.raises(ValueError, match="feature_dim"):
        IncrementalClassifier(nn.Linear(3, 3))


# ----------------------------------------------------------------------------- frozen_copy


def test_frozen_copy() -> None:
    model = _classifier().train()
    frozen = frozen_copy(model)
    assert model.training  # the original is untouched
    assert not frozen.training and not any(m.training for m in frozen.modules())
    assert not any(p.requires_grad for p in frozen.parameters())
    assert all(p.requires_grad for p in model.parameters())
    original_ptrs = {t.data_ptr() for t in list(model.parameters()) + list(model.buffers())}
    frozen_ptrs = {t.data_ptr() for t in list(frozen.parameters()) + list(frozen.buffers())}
    assert original_ptrs.isdisjoint(frozen_ptrs)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = frozen(x).logits.clone()
        for p in model.parameters():
            p.add_(1.0)
        assert torch.equal(frozen(x).logits, before)


# ----------------------------------------------------------------------------- channels_last


@pytest.mark.parametrize("name", ["resnet32", "resnet18"])
def test_channels_last_matches_nchw(name: str) -> None:
    options = {"stem": "small"} if name == "resnet18" else {}
    model = IncrementalClassifier(build_backbone(name, **options))
    model.add_head(4)
    _randomise_bn(model)
    model.eval()
    cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    cl.add_head(2)
    model.add_head(2)
    with torch.no_grad():
        cl.heads[1].weight.copy_(model.heads[1].weight)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        out = cl(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out.features, ref.features, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.logits, ref.logits, rtol=1e-4, atol=1e-4)
