"""The DADA network (model.py): the reference DeepLab-v2 backbone, timm backbones, heads, discriminator, weights."""
from __future__ import annotations

import argparse
import collections
import os
import urllib.error

import pytest
import timm
import timm.models._builder as timm_builder
import timm.models._hub as timm_hub
import torch
import torch.hub
from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled
from safetensors.torch import save_file
from torch import nn
from torch.testing import assert_close

from dada_fastai.model import (DADA, REFERENCE_ARCH, DeepLabV2Classifier, DepthBlock, Discriminator, WeightsError,
                               create_backbone, load_official_state_dict, official_deeplabv2,
                               official_deeplabv2_depth, param_groups)
from dada_fastai.weights import load_weights_file, reference_name

SMALL = (1, 1, 1, 1)  # block counts of the small reference copies


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch):
    """Every way timm fetches weights fails the test: nothing here may touch the network."""
    def refuse(*args, **kwargs):
        pytest.fail(f'a test tried to download weights: {args} {kwargs}')
    monkeypatch.setattr(timm_hub, 'hf_hub_download', refuse)
    monkeypatch.setattr(timm_hub, 'download_url_to_file', refuse)
    monkeypatch.setattr(timm_builder, 'load_state_dict_from_url', refuse)
    monkeypatch.setattr(timm_builder, 'download_cached_file', refuse)
    monkeypatch.setattr(torch.hub, 'download_url_to_file', refuse)


def _block_counts(backbone: nn.Module) -> list[int]:
    return [len(getattr(backbone, f'layer{i}')) for i in range(1, 5)]


def _reference_resnet(layers=(2, 2, 2, 2)) -> nn.Module:
    return timm.create_model(REFERENCE_ARCH, layers=layers)


# ---------------------------------------------------------------------------------------------------------
# The reference DeepLab-v2 ResNet backbone
# ---------------------------------------------------------------------------------------------------------
def test_reference_stem_and_ceil_mode_maxpool():
    net = _reference_resnet(SMALL)
    assert (net.conv1.kernel_size, net.conv1.stride, net.conv1.padding) == ((7, 7), (2, 2), (3, 3))
    assert net.conv1.bias is None
    assert net.maxpool.ceil_mode and (net.maxpool.kernel_size, net.maxpool.stride, net.maxpool.padding) == (3, 2, 1)
    model = official_deeplabv2_depth(4, layers=SMALL).eval()
    with torch.no_grad():
        seg, depth = model(torch.randn(1, 3, 96, 160))
    assert seg.shape == (1, 4, 13, 21) and depth.shape == (1, 1, 13, 21)  # floor-mode pooling gives 12x20


def test_reference_stride_on_first_1x1_conv_of_layer2_only():
    net = _reference_resnet()
    for i in range(1, 5):
        for j, block in enumerate(getattr(net, f'layer{i}')):
            expected = (2, 2) if (i, j) == (2, 0) else (1, 1)
            assert block.conv1.stride == expected, f'layer{i}.{j}.conv1'
            assert block.conv1.kernel_size == (1, 1)
            assert block.conv2.stride == (1, 1), f'layer{i}.{j}.conv2 carries a stride'
            assert block.conv3.stride == (1, 1)


@pytest.mark.parametrize('layer, dilation', [(1, 1), (2, 1), (3, 2), (4, 4)])
def test_reference_dilation_on_every_block_including_the_first(layer, dilation):
    net = _reference_resnet()
    blocks = list(getattr(net, f'layer{layer}'))
    assert len(blocks) == 2
    for j, block in enumerate(blocks):
        assert block.conv2.kernel_size == (3, 3)
        assert block.conv2.dilation == (dilation, dilation), f'layer{layer}.{j}.conv2'
        assert block.conv2.padding == (dilation, dilation), f'layer{layer}.{j}.conv2'


def test_reference_downsample_branch_in_first_block_of_every_layer():
    net = _reference_resnet()
    for i, stride in zip(range(1, 5), (1, 2, 1, 1)):
        first, second = getattr(net, f'layer{i}')
        conv, bn = first.downsample
        assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d), f'layer{i}.0.downsample'
        assert (conv.kernel_size, conv.stride, conv.padding) == ((1, 1), (stride, stride), (0, 0))
        assert conv.bias is None and conv.out_channels == bn.num_features == 64 * 2 ** (i - 1) * 4
        assert second.downsample is None


def test_reference_layer_counts_are_settable():
    assert _block_counts(_reference_resnet(SMALL)) == [1, 1, 1, 1]
    assert _block_counts(official_deeplabv2(3, layers=(1, 2, 3, 1)).backbone) == [1, 2, 3, 1]
    # the default (3, 4, 23, 3) is counted in test_full_size_forward_at_paper_input_size


def test_reference_bn_affine_frozen_and_convs_trainable():
    model = official_deeplabv2_depth(4, layers=SMALL)
    bns = [m for m in model.backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(bns) == 1 + 4 * 4  # stem + 3 per block + the downsample BN, one block per layer
    assert all(not p.requires_grad for bn in bns for p in bn.parameters())
    assert all(c.weight.requires_grad for c in convs)
    model.train()
    before = model.backbone.bn1.running_mean.clone()
    model(torch.randn(1, 3, 32, 48))  # the reference trains in train mode: batch statistics are tracked
    assert not torch.equal(before, model.backbone.bn1.running_mean)
    unfrozen = official_deeplabv2_depth(4, layers=SMALL, freeze_bn=False)
    assert unfrozen.backbone.bn1.weight.requires_grad


@pytest.mark.parametrize('arch', ['resnet10t', REFERENCE_ARCH])
def test_from_scratch_every_residual_branch_trains(arch):
    """timm starts each block's last BatchNorm scale at zero; frozen there, the block's branch would never train."""
    kw = dict(layers=SMALL) if arch == REFERENCE_ARCH else {}
    model = DADA(4, arch=arch, pretrained=False, **kw)
    seg, depth = model(torch.randn(2, 3, 32, 48))
    (seg.square().mean() + depth.square().mean()).backward()
    silent = [n for n, p in model.backbone.named_parameters() if p.requires_grad and not p.grad.any()]
    assert not silent
    assert all(not p.requires_grad for m in model.backbone.modules() if isinstance(m, nn.BatchNorm2d)
               for p in m.parameters())  # still the reference's frozen affine


def test_loaded_backbone_weights_keep_their_bn_scales(tmp_path):
    """Only a backbone trained from scratch has its zero scales set to one: loaded weights stay as they are."""
    trained = timm.create_model('resnet10t', pretrained=False)  # a checkpoint whose last scales are zero
    torch.save(trained.state_dict(), tmp_path / 'resnet10t.pth')
    model = DADA(4, arch='resnet10t', pretrained=False, weights=tmp_path / 'resnet10t.pth')
    assert not model.backbone.layer1[0].bn2.weight.any()
    assert DADA(4, arch='resnet10t', pretrained=False).backbone.layer1[0].bn2.weight.all()


def _expected_reference_names(layers, with_depth=True) -> set[str]:
    bn = ('weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked')
    names = {'conv1.weight'} | {f'bn1.{s}' for s in bn}
    for i, n in enumerate(layers, 1):
        for j in range(n):
            for k in (1, 2, 3):
                names |= {f'layer{i}.{j}.conv{k}.weight'} | {f'layer{i}.{j}.bn{k}.{s}' for s in bn}
        names |= {f'layer{i}.0.downsample.0.weight'} | {f'layer{i}.0.downsample.1.{s}' for s in bn}
    names |= {f'layer6.conv2d_list.{d}.{s}' for d in range(4) for s in ('weight', 'bias')}
    if with_depth:
        names |= {f'{m}.{s}' for m in ('enc4_1', 'enc4_2', 'enc4_3', 'dec4') for s in ('weight', 'bias')}
    return names


def test_state_dict_keys_are_the_reference_names_under_backbone():
    layers = (1, 2, 1, 1)
    model = official_deeplabv2_depth(4, layers=layers)
    keys = list(model.state_dict())
    backbone_keys = [k for k in keys if k.startswith('backbone.')]
    assert {reference_name(k) for k in keys} == _expected_reference_names(layers)
    assert {k.removeprefix('backbone.') for k in backbone_keys} == {
        k for k in _expected_reference_names(layers, with_depth=False) if not k.startswith('layer6.')}
    plain = official_deeplabv2(4, layers=layers)
    assert {reference_name(k) for k in plain.state_dict()} == _expected_reference_names(layers, with_depth=False)


def test_full_size_forward_at_paper_input_size():
    """The only full-size test: ResNet-101 (timm) and the reference backbone at 760x1280 on CPU."""
    x = torch.randn(1, 3, 760, 1280)
    ref = official_deeplabv2_depth(16).eval()
    assert _block_counts(ref.backbone) == [3, 4, 23, 3]
    with torch.no_grad():
        seg, depth = ref(x)
    assert seg.shape == (1, 16, 96, 161) and depth.shape == (1, 1, 96, 161)  # ceil-mode pool, stride on 1x1
    del ref, seg, depth
    backbone = create_backbone('resnet101').eval()
    assert backbone.feature_info.channels()[-1] == 2048 and backbone.feature_info.reduction()[-1] == 8
    with torch.no_grad():
        feats = backbone(x)[-1]
    assert feats.shape == (1, 2048, 95, 160)


# ---------------------------------------------------------------------------------------------------------
# DADA on timm backbones
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('arch, reduction', [
    ('test_resnet', 8), ('test_efficientnet', 8), ('test_convnext', 8),
    ('test_vit', 16),  # no output_stride support: keeps its native stride
    ('test_mambaout', 32),  # NHWC feature maps
])
def test_dada_on_any_timm_backbone(arch, reduction):
    model = DADA(5, arch=arch).eval()
    info = model.backbone.feature_info
    ch = info.channels()[-1]
    assert model.feat_ch == ch and model.reduction == info.reduction()[-1] == reduction
    assert model.depth.enc1.in_channels == model.depth.dec.out_channels == ch
    assert all(c.in_channels == ch and c.out_channels == 5 for c in model.classifier.convs)
    with torch.no_grad():
        seg, depth = model(torch.randn(2, 3, 64, 96))
    assert seg.shape == (2, 5, 64 // reduction, 96 // reduction)
    assert depth.shape == (2, 1, 64 // reduction, 96 // reduction)


def test_output_stride_is_passed_to_the_backbone():
    x = torch.randn(1, 3, 64, 96)
    for stride in (8, 16):
        backbone = create_backbone('test_resnet', output_stride=stride)
        assert backbone.feature_info.reduction()[-1] == stride
        assert backbone(x)[-1].shape[-2:] == (64 // stride, 96 // stride)


def test_without_depth_block():
    model = DADA(3, arch='test_resnet', depth_block=False)
    assert model.depth is None and not model.has_depth
    assert not any('depth' in n for n, _ in model.named_parameters())
    assert model.head_modules() == [model.classifier]
    seg, depth = model(torch.randn(1, 3, 64, 96))
    assert depth is None and seg.shape == (1, 3, 8, 12)


@pytest.mark.parametrize('fusion', [True, False])
def test_feature_fusion_routes_the_decoder_into_segmentation(fusion):
    torch.manual_seed(0)
    model = DADA(3, arch='test_resnet', feature_fusion=fusion).eval()
    assert model.has_depth
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        seg, depth = model(x)
        model.depth.dec.weight.add_(torch.randn_like(model.depth.dec.weight))
        model.depth.dec.bias.add_(1.)
        seg2, depth2 = model(x)
    assert torch.equal(depth, depth2)  # the decoder never feeds the depth output
    assert torch.equal(seg, seg2) is not fusion


def test_fused_features_are_the_product_with_the_decoder():
    torch.manual_seed(0)
    model = DADA(3, arch='test_resnet').eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        feats = model.backbone(x)[-1]
        depth, dec = model.depth(feats)
        seg, depth_out = model(x)
    assert_close(seg, model.classifier(feats * dec))
    assert_close(depth_out, depth)


def test_fusion_bias_starts_the_gate_near_it_and_the_default_is_pytorchs():
    torch.manual_seed(0)
    default = DADA(3, arch='test_resnet')
    fan_in = default.depth.dec.in_channels
    assert default.depth.dec.bias.abs().max() <= fan_in ** -0.5  # PyTorch's uniform bias, as the reference
    torch.manual_seed(0)
    model = DADA(3, arch='test_resnet', fusion_bias=1.).eval()
    assert torch.equal(model.depth.dec.bias, torch.ones_like(model.depth.dec.bias))
    assert torch.equal(model.depth.dec.weight, default.depth.dec.weight)  # only the bias differs
    with torch.no_grad():
        _, gate = model.depth(model.backbone(torch.randn(2, 3, 64, 96))[-1])
    assert (gate - 1).abs().max() < 0.1  # the fused features start as the backbone's own


def test_depth_block_is_inverse_depth_by_channel_mean():
    block = DepthBlock(2048)
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in (block.enc1, block.enc2, block.enc3, block.dec)] \
        == [(2048, 512, (1, 1)), (512, 512, (3, 3)), (512, 128, (1, 1)), (128, 2048, (1, 1))]
    assert block.enc2.padding == (1, 1)
    small = DepthBlock(32, 16, 8)
    x = torch.randn(2, 32, 5, 7)
    with torch.no_grad():
        depth, dec = small(x)
        e = small.enc3(torch.relu(small.enc2(torch.relu(small.enc1(x)))))
    assert_close(depth, e.mean(1, keepdim=True))
    assert_close(dec, torch.relu(small.dec(e)))
    assert (dec >= 0).all() and dec.shape == x.shape


def test_classifier_sums_four_dilated_convs():
    clf = DeepLabV2Classifier(8, 3)
    assert [(c.dilation, c.padding, c.kernel_size) for c in clf.convs] == \
        [((d, d), (d, d), (3, 3)) for d in (6, 12, 18, 24)]
    assert all(c.bias is not None for c in clf.convs)
    x = torch.randn(2, 8, 30, 31)
    with torch.no_grad():
        out = clf(x)
        assert out.shape == (2, 3, 30, 31)
        assert_close(out, sum(c(x) for c in clf.convs))
    big = DeepLabV2Classifier(2048, 16)  # the reference's N(0, 0.01) init
    std = torch.cat([c.weight.flatten() for c in big.convs]).std().item()
    assert 0.009 < std < 0.011


def test_param_groups_split_backbone_and_head_without_frozen_params():
    model = DADA(3, arch='test_resnet')
    body, head = param_groups(model)
    ids = lambda ps: {id(p) for p in ps}
    head_expected = [p for m in (model.classifier, model.depth) for p in m.parameters()]
    backbone_trainable = [p for p in model.backbone.parameters() if p.requires_grad]
    assert ids(head) == ids(head_expected) and len(head) == len(head_expected)
    assert ids(body) == ids(backbone_trainable) and len(body) == len(backbone_trainable)
    frozen = [p for p in model.parameters() if not p.requires_grad]
    assert frozen and not ids(frozen) & (ids(body) | ids(head))
    assert ids(body) | ids(head) == ids(p for p in model.parameters() if p.requires_grad)


# ---------------------------------------------------------------------------------------------------------
# Discriminator
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('n_classes, ndf', [(16, 64), (1, 8)])
def test_discriminator_layout(n_classes, ndf):
    d = Discriminator(n_classes, ndf)
    assert {k.split('.')[0] for k in d.state_dict()} == {'0', '2', '4', '6', '8'}
    convs = [d[i] for i in (0, 2, 4, 6, 8)]
    assert [(c.in_channels, c.out_channels) for c in convs] == \
        [(n_classes, ndf), (ndf, 2 * ndf), (2 * ndf, 4 * ndf), (4 * ndf, 8 * ndf), (8 * ndf, 1)]
    assert all((c.kernel_size, c.stride, c.padding) == ((4, 4), (2, 2), (1, 1)) for c in convs)
    assert all(isinstance(d[i], nn.LeakyReLU) and d[i].negative_slope == 0.2 for i in (1, 3, 5, 7))
    assert len(d) == 9
    assert d(torch.randn(2, n_classes, 64, 96)).shape == (2, 1, 2, 3)


# ---------------------------------------------------------------------------------------------------------
# The reference's weights
# ---------------------------------------------------------------------------------------------------------
def _ref_state(model: DADA) -> dict[str, torch.Tensor]:
    return {reference_name(k): v.clone() for k, v in model.state_dict().items()}


def _randomise_bn_stats(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)


def test_official_state_dict_round_trip():
    torch.manual_seed(0)
    src = official_deeplabv2_depth(4, layers=SMALL)
    _randomise_bn_stats(src)
    sd = _ref_state(src)
    assert {'conv1.weight', 'layer1.0.downsample.0.weight', 'layer6.conv2d_list.3.bias', 'enc4_1.weight',
            'dec4.bias'} <= set(sd)
    dst = official_deeplabv2_depth(4, layers=SMALL)
    x = torch.randn(1, 3, 32, 48)
    src.eval(), dst.eval()
    with torch.no_grad():
        seg_src, depth_src = src(x)
        assert not torch.allclose(dst(x)[0], seg_src)
        assert load_official_state_dict(dst, sd) is dst
        seg, depth = dst(x)
    assert torch.equal(seg, seg_src) and torch.equal(depth, depth_src)
    assert dst.backbone.bn1.weight.requires_grad is False  # loading keeps BN frozen


def test_imagenet_init_loads_backbone_only():
    """The DeepLab ImageNet initialisation: keys under `Scale.`, an unused `layer5` classifier, no heads, and
    (saved before PyTorch 0.4.1) no BatchNorm `num_batches_tracked`."""
    torch.manual_seed(0)
    src = official_deeplabv2(4, layers=SMALL)
    _randomise_bn_stats(src)
    sd = {f'Scale.{reference_name(k)}': v for k, v in src.state_dict().items()
          if k.startswith('backbone.') and not k.endswith('num_batches_tracked')}
    sd.update({f'Scale.layer5.conv2d_list.{i}.{s}': torch.randn(21, 1024, 3, 3) if s == 'weight' else torch.randn(21)
               for i in range(4) for s in ('weight', 'bias')})
    dst = official_deeplabv2_depth(16, layers=SMALL)
    heads_before = {k: v.clone() for k, v in dst.state_dict().items() if not k.startswith('backbone.')}
    load_official_state_dict(dst, sd)
    after = dst.state_dict()
    for k, v in src.state_dict().items():
        if k.startswith('backbone.') and not k.endswith('num_batches_tracked'):
            assert torch.equal(after[k], v), k
    for k, v in heads_before.items():
        assert torch.equal(after[k], v), f'{k} changed'


def test_advent_snapshot_loads_into_plain_deeplab():
    torch.manual_seed(0)
    src = official_deeplabv2(4, layers=SMALL)
    sd = _ref_state(src)
    assert not any(k.startswith(('enc4_', 'dec4')) for k in sd)
    dst = official_deeplabv2(4, layers=SMALL)
    load_official_state_dict(dst, sd)
    x = torch.randn(1, 3, 32, 48)
    src.eval(), dst.eval()
    with torch.no_grad():
        assert torch.equal(dst(x)[0], src(x)[0])
    with pytest.raises(WeightsError, match=r'missing 8 keys: .*dec4\.bias'):
        load_official_state_dict(official_deeplabv2_depth(4, layers=SMALL), sd)


def test_mismatched_snapshot_raises_and_leaves_the_model_untouched():
    torch.manual_seed(0)
    sd19 = _ref_state(official_deeplabv2_depth(19, layers=SMALL))
    dst = official_deeplabv2_depth(16, layers=SMALL)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(WeightsError) as err:
        load_official_state_dict(dst, sd19)
    msg = str(err.value)
    assert 'shape mismatch' in msg and 'layer6.conv2d_list.0.weight (19, 2048, 3, 3) vs (16, 2048, 3, 3)' in msg
    assert all(torch.equal(v, dst.state_dict()[k]) for k, v in before.items())

    sd = _ref_state(official_deeplabv2_depth(16, layers=SMALL))
    del sd['enc4_2.weight']
    sd['layer7.weight'] = torch.zeros(1)
    with pytest.raises(WeightsError) as err:
        load_official_state_dict(dst, sd)
    msg = str(err.value)
    assert 'missing 1 keys: enc4_2.weight' in msg  # named as in the file
    assert 'unexpected 1 keys: layer7.weight' in msg
    assert all(torch.equal(v, dst.state_dict()[k]) for k, v in before.items())


# ---------------------------------------------------------------------------------------------------------
# Weights files
# ---------------------------------------------------------------------------------------------------------
class _Opaque:
    """A custom class: unpickling it needs code from this module."""


class _Payload:
    """Unpickling this would run `os.mkdir`."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path,)


def _check_refused(path, *words):
    with pytest.raises(WeightsError) as err:
        load_weights_file(path)
    msg = str(err.value)
    assert str(path) in msg and '\n' not in msg and '\x1b' not in msg, msg
    for w in words:
        assert w in msg, msg
    return msg


def test_state_dict_files_load(tmp_path):
    sd = timm.create_model('test_resnet').state_dict()
    torch.save(sd, tmp_path / 'w.pth')
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / 'w.safetensors'))
    for name in ('w.pth', 'w.safetensors'):
        loaded = load_weights_file(tmp_path / name)
        assert loaded.keys() == sd.keys() and all(torch.equal(loaded[k], sd[k]) for k in sd)
        backbone = create_backbone('test_resnet', weights=tmp_path / name)
        assert all(torch.equal(v, sd[k]) for k, v in backbone.state_dict().items())


def test_timm_training_checkpoint_loads(tmp_path):
    """timm's train.py checkpoints wrap the weights in `state_dict` beside optimizer state and argparse args."""
    full = timm.create_model('test_resnet')
    opt = torch.optim.SGD(full.parameters(), lr=0.1, momentum=0.9)
    ckpt = {'epoch': 3, 'arch': 'test_resnet', 'state_dict': full.state_dict(), 'optimizer': opt.state_dict(),
            'args': argparse.Namespace(lr=0.1, model='test_resnet'), 'metric': 0.5, 'version': 2}
    torch.save(ckpt, tmp_path / 'checkpoint-3.pth.tar')
    backbone = create_backbone('test_resnet', weights=tmp_path / 'checkpoint-3.pth.tar')
    sd = full.state_dict()
    assert all(torch.equal(v, sd[k]) for k, v in backbone.state_dict().items())


def test_timm_checkpoint_of_a_feature_getter_family_loads(tmp_path):
    """ViT-like families wrap the model (`model.` keys) in their features_only form."""
    full = timm.create_model('test_vit')
    torch.save(full.state_dict(), tmp_path / 'vit.pth')
    backbone = create_backbone('test_vit', weights=tmp_path / 'vit.pth')
    sd = full.state_dict()
    for k, v in backbone.state_dict().items():
        assert torch.equal(v, sd[k.removeprefix('model.')]), k


def test_reference_imagenet_file_loads_into_the_reference_backbone(tmp_path):
    src = create_backbone(REFERENCE_ARCH, layers=SMALL)
    _randomise_bn_stats(src)
    sd = {f'Scale.{k}': v for k, v in src.state_dict().items() if not k.endswith('num_batches_tracked')}
    sd['Scale.layer5.conv2d_list.0.weight'] = torch.randn(21, 1024, 3, 3)
    torch.save(sd, tmp_path / 'DeepLab_resnet_pretrained_imagenet.pth')
    model = official_deeplabv2_depth(16, layers=SMALL, weights=tmp_path / 'DeepLab_resnet_pretrained_imagenet.pth')
    for k, v in src.state_dict().items():
        if not k.endswith('num_batches_tracked'):
            assert torch.equal(model.backbone.state_dict()[k], v), k


def test_backbone_file_that_does_not_fit(tmp_path):
    torch.save(timm.create_model('test_efficientnet').state_dict(), tmp_path / 'eff.pth')
    with pytest.raises(WeightsError, match='does not fit the backbone') as err:
        create_backbone('test_resnet', weights=tmp_path / 'eff.pth')
    assert str(tmp_path / 'eff.pth') in str(err.value) and 'missing' in str(err.value)


def test_unreadable_files_are_refused(tmp_path):
    _check_refused(tmp_path / 'nowhere.pth', 'not found')
    (tmp_path / 'zero.pth').write_bytes(b'')
    _check_refused(tmp_path / 'zero.pth', 'empty (0 bytes)')
    torch.save(timm.create_model('test_resnet').state_dict(), tmp_path / 'full.pth')
    data = (tmp_path / 'full.pth').read_bytes()
    (tmp_path / 'cut.pth').write_bytes(data[:len(data) // 2])
    _check_refused(tmp_path / 'cut.pth', 'truncated')
    save_file({'w': torch.zeros(100)}, str(tmp_path / 'w.safetensors'))
    data = (tmp_path / 'w.safetensors').read_bytes()
    (tmp_path / 'cut.safetensors').write_bytes(data[:-16])
    _check_refused(tmp_path / 'cut.safetensors')
    (tmp_path / 'text.pth').write_text('not weights')
    _check_refused(tmp_path / 'text.pth')
    with pytest.raises(WeightsError, match='not found'):
        create_backbone('test_resnet', weights=tmp_path / 'nowhere.pth')


def test_pickles_needing_code_are_refused_without_running_it(tmp_path):
    torch.save({'w': torch.zeros(2), 'extra': _Opaque()}, tmp_path / 'custom.pth')
    _check_refused(tmp_path / 'custom.pth', 'pickle code execution', '_Opaque')
    marker = tmp_path / 'was_executed'
    torch.save({'w': torch.zeros(2), 'payload': _Payload(str(marker))}, tmp_path / 'payload.pth')
    _check_refused(tmp_path / 'payload.pth', 'pickle code execution', 'mkdir')
    assert not marker.exists()
    torch.save({'w': torch.zeros(2), 'counts': collections.Counter(a=1)}, tmp_path / 'counter.pth')
    _check_refused(tmp_path / 'counter.pth')
    with pytest.raises(WeightsError, match='pickle code execution'):
        create_backbone('test_resnet', weights=tmp_path / 'custom.pth')


# ---------------------------------------------------------------------------------------------------------
# Pretrained weights without a network, unknown names
# ---------------------------------------------------------------------------------------------------------
def _check_offline_message(err, arch):
    msg = str(err.value)
    assert isinstance(err.value, WeightsError)
    assert repr(arch) in msg and '--weights' in msg and '--no-pretrained' in msg and '\n' not in msg, msg


@pytest.fixture
def reachable(monkeypatch):
    """The weights' host answers (then the download itself fails in the tests below)."""
    import socket
    probes = []

    class _Conn:
        def close(self):
            pass

    monkeypatch.setattr(socket, 'create_connection', lambda addr, timeout=None: probes.append(addr) or _Conn())
    return probes


@pytest.mark.parametrize('error', [
    LocalEntryNotFoundError('offline and not in the cache'),  # what huggingface_hub raises without a network
    OfflineModeIsEnabled('HF_HUB_OFFLINE=1'),
    ConnectionError('Name or service not known'),
    OSError('network unreachable'),
])
def test_pretrained_offline_from_the_hub(monkeypatch, reachable, error):
    calls = []

    def offline(*args, **kwargs):
        calls.append(kwargs.get('filename') or args)
        raise error
    monkeypatch.setattr(timm_hub, 'hf_hub_download', offline)
    with pytest.raises(WeightsError) as err:
        create_backbone('test_resnet', pretrained=True)
    assert calls, 'the hub download was not attempted: the test did not exercise the offline path'
    _check_offline_message(err, 'test_resnet')
    with pytest.raises(WeightsError):
        DADA(3, arch='test_resnet', pretrained=True)


def test_pretrained_offline_from_a_url(monkeypatch, reachable):
    calls = []

    def offline(url, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError('[Errno -2] Name or service not known')
    monkeypatch.setattr(timm_builder, 'load_state_dict_from_url', offline)
    with pytest.raises(WeightsError) as err:
        create_backbone('test_resnet', pretrained=True,
                        pretrained_cfg_overlay=dict(hf_hub_id=None, url='https://weights.invalid/test_resnet.pth'))
    assert calls == ['https://weights.invalid/test_resnet.pth']
    _check_offline_message(err, 'test_resnet')


def test_unreachable_hub_fails_at_once_without_retrying(monkeypatch):
    """No cached weights and no route to the hub (or HF_HUB_OFFLINE): one clear error before any download."""
    import socket
    from huggingface_hub import constants

    def unreachable(addr, timeout=None):
        raise OSError(-2, 'Name or service not known')

    def download(*args, **kwargs):
        raise AssertionError('the download was attempted')
    monkeypatch.setattr(socket, 'create_connection', unreachable)
    monkeypatch.setattr(timm_hub, 'hf_hub_download', download)
    with pytest.raises(WeightsError) as err:
        create_backbone('test_resnet', pretrained=True)
    _check_offline_message(err, 'test_resnet')
    assert 'huggingface.co is unreachable (Name or service not known)' in str(err.value)
    with pytest.raises(WeightsError) as err:
        create_backbone('test_resnet', pretrained=True,
                        pretrained_cfg_overlay=dict(hf_hub_id=None, url='https://weights.invalid/test_resnet.pth'))
    assert 'weights.invalid is unreachable' in str(err.value)
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', True)
    with pytest.raises(WeightsError, match='HF_HUB_OFFLINE is set'):
        create_backbone('test_resnet', pretrained=True)
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', False)
    monkeypatch.setenv('HTTPS_PROXY', 'http://proxy.invalid:3128')  # a proxy: no probe, timm's own error
    with pytest.raises(AssertionError, match='the download was attempted'):
        create_backbone('test_resnet', pretrained=True)


def test_cached_weights_need_no_network(monkeypatch, tmp_path):
    """Weights in the local cache: no probe of the network; timm loads them."""
    import socket
    import huggingface_hub
    cached = tmp_path / 'model.safetensors'
    save_file(timm.create_model('test_resnet').state_dict(), str(cached))

    def unreachable(addr, timeout=None):
        raise AssertionError('the network was probed although the weights are cached')
    monkeypatch.setattr(socket, 'create_connection', unreachable)
    monkeypatch.setattr(huggingface_hub, 'try_to_load_from_cache',
                        lambda repo, name, **kw: str(cached) if name == 'model.safetensors' else None)
    monkeypatch.setattr(timm_hub, 'hf_hub_download', lambda *a, **kw: str(cached))
    backbone = create_backbone('test_resnet', pretrained=True)
    assert backbone.feature_info.channels()[-1] > 0


def test_pretrained_without_published_weights():
    with pytest.raises(WeightsError) as err:
        create_backbone('test_resnet', pretrained=True, pretrained_cfg_overlay=dict(hf_hub_id=None, url=None))
    _check_offline_message(err, 'test_resnet')
    assert 'no pretrained weights' in str(err.value)


def test_pretrained_reference_backbone_points_to_the_weights_file():
    with pytest.raises(WeightsError) as err:
        create_backbone(REFERENCE_ARCH, pretrained=True, layers=SMALL)
    _check_offline_message(err, REFERENCE_ARCH)
    assert 'DeepLab_resnet_pretrained_imagenet.pth' in str(err.value)


def test_pretrained_and_weights_are_exclusive(tmp_path):
    with pytest.raises(ValueError, match='not both'):
        create_backbone('test_resnet', pretrained=True, weights=tmp_path / 'w.pth')


def test_unknown_arch():
    with pytest.raises(ValueError, match=r"unknown backbone 'resnet_does_not_exist'.*timm\.list_models\(\)"):
        create_backbone('resnet_does_not_exist')
    with pytest.raises(ValueError, match='unknown backbone'):
        DADA(3, arch='resnet_does_not_exist')
