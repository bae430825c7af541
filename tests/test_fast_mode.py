"""Fast mode changes how DADA is computed, never what: same losses and gradients as the faithful mode."""
from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from dada_fastai.data import dada_dataloaders
from dada_fastai.learner import dada_learner
from e2e import tiny_pair
from test_learner_parity import _CaptureGrads, _golden_dls
from conftest import golden_state
from dada_fastai.losses import Lambdas
from dada_fastai.model import load_official_state_dict, official_deeplabv2_depth


@pytest.fixture(scope='module')
def pair(tmp_path_factory):
    return tiny_pair(tmp_path_factory.mktemp('data'))


def _terms_after_steps(pair, mode: str, precision: str | None, method: str = 'dada', steps: int = 4) -> dict:
    torch.manual_seed(0)
    dls = dada_dataloaders(*pair, n_classes=7, source_size=(32, 48), target_size=(32, 64), bs=2, seed=0)
    learn = dada_learner(dls, method, arch='test_resnet', ndf=8, mode=mode, precision=precision, lr=5e-3)
    learn.fit_iters(steps, schedule='poly')
    terms = {k: v.value for k, v in learn.dada.terms.items()}
    params = torch.cat([p.detach().flatten() for p in learn.model.parameters()])
    return {'terms': terms, 'params': params, 'n_mp': len([c for c in learn.cbs if c.name == 'mixed_precision'])}


@pytest.mark.parametrize('method', ['dada', 's6'])
def test_fast_fp32_matches_faithful(pair, method):
    faithful = _terms_after_steps(pair, 'faithful', None, method)
    fast = _terms_after_steps(pair, 'fast', 'fp32', method)
    assert faithful['terms'].keys() == fast['terms'].keys()
    for k in faithful['terms']:
        assert fast['terms'][k] == pytest.approx(faithful['terms'][k], rel=1e-4), k
    assert_close(fast['params'], faithful['params'], rtol=1e-4, atol=1e-6)


def test_fast_bf16_stays_close_to_faithful(pair):
    faithful = _terms_after_steps(pair, 'faithful', None)
    fast = _terms_after_steps(pair, 'fast', 'bf16')
    assert fast['n_mp'] == 1 and faithful['n_mp'] == 0
    assert not torch.is_autocast_enabled('cpu')  # mixed precision must not leak out of training
    for k in faithful['terms']:
        assert fast['terms'][k] == pytest.approx(faithful['terms'][k], rel=3e-2), k


def test_fused_backward_gives_the_reference_gradients(golden):
    """Fast mode's two backward passes accumulate the same gradients as the reference's four."""
    t, js = golden['t'], golden['json']
    model = official_deeplabv2_depth(js['num_classes'], layers=js['layers'])
    load_official_state_dict(model, golden_state(golden, 'init_model.'))
    capture = _CaptureGrads()
    learn = dada_learner(_golden_dls(t), 'dada', model=model, n_classes=js['num_classes'], mode='fast',
                         precision='fp32', lambdas=Lambdas(**js['lambdas']), cbs=[capture])
    learn.dada.discriminators['dada'].load_state_dict(golden_state(golden, 'init_d.'))
    learn.fit(1, lr=0.)
    assert learn.dada.fused
    for prefix, grads in (('model', capture.model_grads), ('d', capture.d_grads)):
        names = [k.split('.', 1)[1] for k in t if k.startswith(f'gradnorm_{prefix}.')]
        assert set(names) == set(grads)
        for n in names:
            assert_close(grads[n].norm().reshape(1), t[f'gradnorm_{prefix}.{n}'], rtol=1e-3, atol=1e-9)
