"""DADA's losses (losses.py) and one training iteration (learner.run_iteration), against direct implementations of the reference formulas."""
from __future__ import annotations


import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from dada_fastai.losses import (ADAPT_MAPS, IGNORE_INDEX, SOURCE_LABEL, TARGET_LABEL, Lambdas, adaptation_map,
                                bce_to_label, berhu_loss, dada_fusion, discriminator_loss,
                                fooling_loss, seg_loss, set_requires_grad, source_loss, upsample,
                                weighted_self_information)
from dada_fastai.learner import run_iteration
from dada_fastai.model import DADA, Discriminator


# ---------------------------------------------------------------------------------------------------------
# berHu
# ---------------------------------------------------------------------------------------------------------
def berhu_np(pred: np.ndarray, target: np.ndarray) -> float:
    """The reference formula on the pixels given: c = 0.2 max|e|, |e| if |e| <= c else (e^2 + c^2) / (2c), mean."""
    e = pred - target
    a = np.abs(e)
    c = 0.2 * a.max()
    return float(np.where(a <= c, a, (e ** 2 + c ** 2) / (2 * c)).mean())


def _depth_pair(seed=0, shape=(2, 1, 8, 10)):
    g = torch.Generator().manual_seed(seed)
    pred = torch.rand(shape, generator=g, dtype=torch.float64) * 2
    target = torch.rand(shape, generator=g, dtype=torch.float64) * 2 + 0.1
    pred[1] = pred[1] * 3  # the images' largest errors differ: c must be taken over the whole batch
    return pred, target


def test_berhu_matches_the_reference_formula():
    pred, target = _depth_pair()
    assert_close(berhu_loss(pred, target).item(), berhu_np(pred.numpy(), target.numpy()), rtol=1e-12, atol=1e-12)
    # the target may come as (B, H, W)
    assert_close(berhu_loss(pred, target[:, 0]).item(), berhu_np(pred.numpy(), target.numpy()), rtol=1e-12,
                 atol=1e-12)


def test_berhu_gradient_treats_c_as_a_constant():
    pred, target = _depth_pair(1)
    pred.requires_grad_(True)
    berhu_loss(pred, target).backward()
    e = (pred - target).detach()
    c = 0.2 * e.abs().max()
    expected = torch.where(e.abs() <= c, e.sign(), e / c) / e.numel()
    assert (e.abs() > c).any() and (e.abs() <= c).any()  # both branches are exercised
    assert_close(pred.grad, expected, rtol=1e-10, atol=1e-12)


def test_berhu_leaves_missing_depth_out_of_c_and_the_mean():
    pred, target = _depth_pair(2)
    target[0, 0, :3] = 0.  # no depth (sparse)
    target[1, 0, 2:4, 5:] = float('nan')  # no depth (invalid)
    missing = (target == 0) | target.isnan()
    pred[missing] = 100.  # would dominate c and the mean if counted
    pred.requires_grad_(True)
    loss = berhu_loss(pred, target)
    valid = ~missing
    assert_close(loss.item(), berhu_np(pred.detach()[valid].numpy(), target[valid].numpy()), rtol=1e-12, atol=1e-12)
    loss.backward()
    assert torch.isfinite(pred.grad).all()
    assert (pred.grad[missing] == 0).all() and (pred.grad[valid] != 0).all()


def test_berhu_explicit_mask():
    pred, target = _depth_pair(3)
    mask = torch.ones_like(pred, dtype=torch.bool)
    mask[0, 0, ::2] = False
    pred[~mask] = 50.
    target[1, 0, 0, 0] = 0.  # combined with the missing-depth rule
    keep = mask & (target > 0)
    expected = berhu_np(pred[keep].numpy(), target[keep].numpy())
    assert_close(berhu_loss(pred, target, mask=mask).item(), expected, rtol=1e-12, atol=1e-12)
    assert_close(berhu_loss(pred, target, mask=mask.float()[:, 0]).item(), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('fill', [0., float('nan')])
def test_berhu_without_any_depth_is_zero_with_a_zero_gradient(fill):
    pred = torch.rand(2, 1, 4, 5, requires_grad=True)
    loss = berhu_loss(pred, torch.full((2, 1, 4, 5), fill))
    assert loss.item() == 0.
    loss.backward()
    assert torch.isfinite(pred.grad).all() and (pred.grad == 0).all()


def test_berhu_of_a_perfect_prediction():
    target = torch.rand(1, 1, 4, 5) + 0.5
    pred = target.clone().requires_grad_(True)
    loss = berhu_loss(pred, target)
    assert loss.item() == 0.
    loss.backward()
    assert torch.isfinite(pred.grad).all()


# ---------------------------------------------------------------------------------------------------------
# Surprisal, fusion and what the discriminators see
# ---------------------------------------------------------------------------------------------------------
def test_weighted_self_information_formula():
    prob = F.softmax(torch.randn(2, 5, 4, 3, dtype=torch.float64), dim=1)
    p = prob.numpy()
    expected = -p * np.log2(p + 1e-30) / np.log2(5)
    assert_close(weighted_self_information(prob), torch.from_numpy(expected), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize('n_classes', [2, 7, 16])
def test_weighted_self_information_extremes(n_classes):
    uniform = torch.full((1, n_classes, 3, 4), 1 / n_classes)
    info = weighted_self_information(uniform)
    assert_close(info, torch.full_like(uniform, 1 / n_classes))
    assert_close(info.sum(1), torch.ones(1, 3, 4))
    one_hot = F.one_hot(torch.randint(0, n_classes, (1, 3, 4)), n_classes).permute(0, 3, 1, 2).float()
    assert (weighted_self_information(one_hot) == 0).all()


def test_dada_fusion_weights_every_class_by_the_depth():
    surprisal, depth = torch.rand(2, 4, 5, 6), torch.rand(2, 1, 5, 6)
    fused = dada_fusion(surprisal, depth)
    assert fused.shape == (2, 4, 5, 6)
    for c in range(4):
        assert_close(fused[:, c], surprisal[:, c] * depth[:, 0])


def test_adaptation_maps():
    seg, depth = torch.randn(2, 4, 5, 6), torch.rand(2, 1, 5, 6)
    surprisal = weighted_self_information(F.softmax(seg, dim=1))
    assert_close(adaptation_map(seg, None, 'surprisal'), surprisal)
    assert_close(adaptation_map(seg, depth, 'surprisal'), surprisal)
    assert adaptation_map(seg, depth, 'depth') is depth
    assert_close(adaptation_map(seg, depth, 'dada'), surprisal * depth)
    assert set(ADAPT_MAPS) == {'surprisal', 'depth', 'dada'}


@pytest.mark.parametrize('kind', ['depth', 'dada'])
def test_depth_maps_need_the_depth_block(kind):
    with pytest.raises(ValueError, match='depth block'):
        adaptation_map(torch.randn(1, 3, 2, 2), None, kind)


def test_unknown_adaptation_map():
    with pytest.raises(ValueError, match="unknown adaptation map 'entropy'.*surprisal, depth, dada"):
        adaptation_map(torch.randn(1, 3, 2, 2), torch.rand(1, 1, 2, 2), 'entropy')


def test_upsample_is_bilinear_with_aligned_corners():
    x = torch.randn(2, 3, 5, 7)
    up = upsample(x, (13, 20))
    assert_close(up, F.interpolate(x, size=(13, 20), mode='bilinear', align_corners=True))
    assert not torch.allclose(up, F.interpolate(x, size=(13, 20), mode='bilinear', align_corners=False))
    assert_close(up[..., 0, 0], x[..., 0, 0])  # corners stay where they are
    assert_close(up[..., -1, -1], x[..., -1, -1])
    assert upsample(x, torch.Size([5, 7])) is x


# ---------------------------------------------------------------------------------------------------------
# Segmentation and adversarial losses
# ---------------------------------------------------------------------------------------------------------
def test_seg_loss_ignores_255():
    logits = torch.randn(2, 4, 5, 6, dtype=torch.float64)
    labels = torch.randint(0, 4, (2, 5, 6), dtype=torch.uint8)
    labels[0, :2] = IGNORE_INDEX
    labels[1, :, 0] = IGNORE_INDEX
    valid = labels != IGNORE_INDEX
    logp = F.log_softmax(logits, 1)
    picked = logp.gather(1, labels.long().clamp_max(3).unsqueeze(1))[:, 0]
    expected = -picked[valid].mean()
    loss = seg_loss(logits, labels)
    assert_close(loss, expected)
    ignored = (~valid).unsqueeze(1).expand_as(logits)
    perturbed = logits + 10 * torch.randn_like(logits) * ignored  # logits of ignored pixels do not count
    assert_close(seg_loss(perturbed, labels), loss)
    assert not torch.allclose(seg_loss(logits + 10 * torch.randn_like(logits) * ~ignored, labels), loss)


def test_bce_to_label():
    d_out = torch.randn(2, 1, 3, 4, dtype=torch.float64)
    s = torch.sigmoid(d_out)
    for label in (SOURCE_LABEL, TARGET_LABEL):
        expected = -(label * torch.log(s) + (1 - label) * torch.log(1 - s)).mean()
        assert_close(bce_to_label(d_out, label), expected)
    assert (SOURCE_LABEL, TARGET_LABEL) == (0., 1.)  # the reference's convention (the paper writes the opposite)


def test_source_loss_weights_the_two_terms():
    seg, labels = torch.randn(1, 3, 6, 8), torch.randint(0, 3, (1, 6, 8))
    depth, target = torch.rand(1, 1, 6, 8), torch.rand(1, 6, 8) + 0.1
    lam = Lambdas(seg=2., depth=0.5)
    total, parts = source_loss(seg, depth, labels, target, lam)
    assert_close(parts['seg'], seg_loss(seg, labels))
    assert_close(parts['depth'], berhu_loss(depth, target))
    assert_close(total, 2 * parts['seg'] + 0.5 * parts['depth'])
    total, parts = source_loss(seg, None, labels, target, lam)
    assert set(parts) == {'seg'}
    assert_close(total, 2 * parts['seg'])


def test_discriminator_loss_does_not_reach_the_segmenter():
    d = Discriminator(3, ndf=4)
    fused = torch.rand(1, 3, 32, 32, requires_grad=True)
    discriminator_loss(d, fused, TARGET_LABEL).backward()
    assert fused.grad is None and d[0].weight.grad is not None
    fooling_loss(d, fused).backward()
    assert fused.grad is not None and fused.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------------------
# One iteration
# ---------------------------------------------------------------------------------------------------------
def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    x_src = torch.randn(1, 3, 32, 48, generator=g)
    labels = torch.randint(0, 3, (1, 32, 48), generator=g)
    labels[0, :5] = IGNORE_INDEX
    depth = torch.rand(1, 32, 48, generator=g) + 0.1
    x_trg = torch.randn(1, 3, 40, 64, generator=g)
    return x_src, labels, depth, x_trg


def _model():
    torch.manual_seed(0)
    return DADA(3, arch='test_resnet').train()


def _grads(module) -> dict[str, torch.Tensor]:
    return {n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p))
            for n, p in module.named_parameters() if p.requires_grad}


def _zero(*modules):
    for m in modules:
        m.zero_grad(set_to_none=True)


def _source_grads(model, x_src, labels, depth, lam):
    _zero(model)
    seg, dep = model(x_src)
    loss, _ = source_loss(upsample(seg, labels.shape[-2:]), upsample(dep, labels.shape[-2:]), labels, depth, lam)
    loss.backward()
    return _grads(model), seg.detach(), dep.detach()


def test_iteration_without_discriminators_is_source_only():
    model, (x_src, labels, depth, x_trg) = _model(), _batch()
    lam = Lambdas(depth=0.1)
    expected, seg, dep = _source_grads(model, x_src, labels, depth, lam)
    _zero(model)
    calls = []
    model.register_forward_hook(lambda m, i, o: calls.append(i[0].shape))
    res = run_iteration(model, {}, x_src, labels, depth, x_trg, lam)
    assert calls == [x_src.shape]  # no target forward
    assert res.seg_trg is None and res.depth_trg is None and not res.maps_trg and not res.maps_src
    assert set(res.losses) == {'seg_src', 'depth_src'}
    assert_close(res.seg_src.detach(), seg)
    assert_close(res.depth_src.detach(), dep)
    got = _grads(model)
    for n in expected:
        assert_close(got[n], expected[n], msg=lambda m: f'{n}: {m}')


def test_iteration_gradient_is_source_plus_weighted_fooling_loss():
    model, (x_src, labels, depth, x_trg) = _model(), _batch(1)
    torch.manual_seed(1)
    disc = Discriminator(3, ndf=8)
    lam = Lambdas(depth=0.1, adv=200.)  # large enough for the adversarial gradient to show
    size_s, size_t = labels.shape[-2:], x_trg.shape[-2:]

    g_src, seg_s, dep_s = _source_grads(model, x_src, labels, depth, lam)
    _zero(model, disc)
    set_requires_grad(disc, False)
    seg_t, dep_t = model(x_trg)
    map_t = adaptation_map(upsample(seg_t, size_t), upsample(dep_t, size_t), 'dada')
    (lam.adv * fooling_loss(disc, map_t)).backward()
    g_adv = _grads(model)
    set_requires_grad(disc, True)
    map_s = adaptation_map(upsample(seg_s, size_s), upsample(dep_s, size_s), 'dada')
    _zero(disc)
    discriminator_loss(disc, map_s, SOURCE_LABEL).backward()
    discriminator_loss(disc, map_t, TARGET_LABEL).backward()
    g_disc = _grads(disc)

    _zero(model, disc)
    res = run_iteration(model, {'dada': disc}, x_src, labels, depth, x_trg, lam)
    assert all(p.requires_grad for p in disc.parameters())
    assert set(res.losses) == {'seg_src', 'depth_src', 'adv_dada', 'd_src_dada', 'd_trg_dada'}
    assert_close(res.maps_trg['dada'].detach(), map_t.detach())
    assert_close(res.maps_src['dada'], map_s)
    got = _grads(model)
    adv_norm = torch.stack([g.norm() for g in g_adv.values()]).norm()
    src_norm = torch.stack([g.norm() for g in g_src.values()]).norm()
    assert adv_norm > 1e-2 * src_norm
    for n in g_src:
        assert_close(got[n], g_src[n] + g_adv[n], rtol=1e-4, atol=1e-8, msg=lambda m: f'{n}: {m}')
    got_d = _grads(disc)  # the fooling loss leaves the (frozen) discriminator alone
    for n in g_disc:
        assert_close(got_d[n], g_disc[n], rtol=1e-4, atol=1e-8, msg=lambda m: f'{n}: {m}')


def test_iteration_with_two_discriminators():
    """S6 of the ablation: one discriminator on the surprisal, one on the depth."""
    model, (x_src, labels, depth, x_trg) = _model(), _batch(2)
    discs = {'surprisal': Discriminator(3, ndf=4), 'depth': Discriminator(1, ndf=4)}
    res = run_iteration(model, discs, x_src, labels, depth, x_trg, Lambdas(adv=1.))
    assert res.maps_trg['surprisal'].shape == (1, 3, 40, 64) and res.maps_trg['depth'].shape == (1, 1, 40, 64)
    assert res.maps_src['surprisal'].shape == (1, 3, 32, 48) and res.maps_src['depth'].shape == (1, 1, 32, 48)
    for kind, d in discs.items():
        assert {f'adv_{kind}', f'd_src_{kind}', f'd_trg_{kind}'} <= set(res.losses)
        assert all(p.requires_grad for p in d.parameters())
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in d.parameters()), kind
    assert model.depth.enc1.weight.grad.abs().sum() > 0
