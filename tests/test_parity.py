"""Parity with the reference implementation on the golden data (../shared/golden, see its README)."""
from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from conftest import golden_state
from dada_fastai.learner import run_iteration
from dada_fastai.losses import Lambdas
from dada_fastai.model import Discriminator, load_official_state_dict, official_deeplabv2_depth
from dada_fastai.weights import reference_name

OUT = dict(rtol=1e-4, atol=1e-5)  # outputs and losses (golden README)
GRAD = dict(rtol=1e-3, atol=1e-9)  # gradient fingerprints (golden README)


def _models(golden):
    model = official_deeplabv2_depth(golden['json']['num_classes'], layers=golden['json']['layers'])
    load_official_state_dict(model, golden_state(golden, 'init_model.'))
    disc = Discriminator(golden['json']['num_classes'])
    disc.load_state_dict(golden_state(golden, 'init_d.'))
    return model, disc


@pytest.fixture(scope='module')
def iteration(golden):
    """One reference iteration (train mode) computed by `run_iteration`, the function training uses."""
    t, js = golden['t'], golden['json']
    model, disc = _models(golden)
    model.train()
    lam = Lambdas(**js['lambdas'])
    res = run_iteration(model, {'dada': disc}, t['x_src'], t['labels'], t['depth'], t['x_trg'], lam)
    return model, disc, res


def test_eval_outputs_match_reference(golden):
    t = golden['t']
    model, _ = _models(golden)
    model.eval()
    with torch.no_grad():
        for dom in ('src', 'trg'):
            seg, depth = model(t[f'x_{dom}'])
            assert_close(seg, t[f'eval_seg_{dom}'], **OUT)
            assert_close(depth, t[f'eval_depth_{dom}'], **OUT)


def test_train_forward_outputs_and_fused_maps(golden, iteration):
    t = golden['t']
    _, _, res = iteration
    assert_close(res.seg_src.detach(), t['train_seg_src'], **OUT)
    assert_close(res.depth_src.detach(), t['train_depth_src'], **OUT)
    assert_close(res.seg_trg.detach(), t['train_seg_trg'], **OUT)
    assert_close(res.depth_trg.detach(), t['train_depth_trg'], **OUT)
    assert_close(res.maps_src['dada'], t['fused_src'], **OUT)
    assert_close(res.maps_trg['dada'].detach(), t['fused_trg'], **OUT)


def test_five_losses(golden, iteration):
    ref = golden['json']['losses']
    got = iteration[2].losses
    names = {'loss_seg_src': 'seg_src', 'loss_depth_src': 'depth_src', 'loss_adv_trg': 'adv_dada',
             'loss_d_src': 'd_src_dada', 'loss_d_trg': 'd_trg_dada'}
    for ref_name, ours in names.items():
        assert_close(got[ours], torch.tensor(ref[ref_name]), **OUT, msg=lambda m: f'{ref_name}: {m}')


def test_discriminator_output_and_bn_stats(golden, iteration):
    t = golden['t']
    model, disc, res = iteration
    with torch.no_grad():
        assert_close(disc(res.maps_trg['dada']), t['d_out_trg_for_adv'], **OUT)
    assert_close(model.backbone.bn1.running_mean, t['bn1_running_mean_after'], **OUT)


def _check_fingerprints(golden, prefix: str, params: dict[str, torch.nn.Parameter], rename=lambda n: n):
    t = golden['t']
    names = [k[len(f'gradnorm_{prefix}.'):] for k in t if k.startswith(f'gradnorm_{prefix}.')]
    assert names, f'no {prefix} gradient fingerprints in the golden data'
    with_grad = {rename(n) for n in names}
    for name, p in params.items():  # parameters the reference did not train must not get gradients either
        if name not in with_grad:
            assert p.grad is None or not p.grad.any(), f'{name} got a gradient the reference does not have'
    for n in names:
        grad = params[rename(n)].grad
        assert grad is not None, f'{n} received no gradient'
        idx = t[f'gradidx_{prefix}.{n}'].long()
        assert_close(grad.flatten()[idx], t[f'gradval_{prefix}.{n}'], **GRAD, msg=lambda m: f'{n}: {m}')
        assert_close(grad.norm().reshape(1), t[f'gradnorm_{prefix}.{n}'], **GRAD, msg=lambda m: f'{n}: {m}')


def test_gradient_fingerprints_segmenter(golden, iteration):
    model, _, _ = iteration
    params = dict(model.named_parameters())
    ref_to_ours = {reference_name(k): k for k in params}
    _check_fingerprints(golden, 'model', {reference_name(k): p for k, p in params.items()})
    assert len(ref_to_ours) == len(params)


def test_gradient_fingerprints_discriminator(golden, iteration):
    _, disc, _ = iteration
    _check_fingerprints(golden, 'd', dict(disc.named_parameters()))
