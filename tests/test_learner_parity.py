"""The golden parity holds through a real fastai Learner batch (the code path that trains)."""
from __future__ import annotations

import torch
from fastai.callback.core import Callback, CancelStepException
from fastai.data.core import DataLoaders
from fastai.data.load import DataLoader
from torch.testing import assert_close

from conftest import golden_state
from dada_fastai.learner import dada_learner
from dada_fastai.losses import Lambdas
from dada_fastai.model import load_official_state_dict, official_deeplabv2_depth
from dada_fastai.weights import reference_name


class _CaptureGrads(Callback):
    """Copy every gradient right before the optimizers step, then skip the step."""
    order = 100

    def before_step(self):
        self.model_grads = {reference_name(n): p.grad.clone() for n, p in self.learn.model.named_parameters()
                            if p.grad is not None}
        disc = self.learn.dada.discriminators['dada']
        self.d_grads = {n: p.grad.clone() for n, p in disc.named_parameters() if p.grad is not None}
        raise CancelStepException()


def _golden_dls(t):
    batch = (t['x_src'], t['x_trg'], t['labels'].long(), t['depth'])
    dl = DataLoader(range(1), bs=1, create_batch=lambda _: batch)
    dl.n_inp = 2
    return DataLoaders(dl, DataLoader(range(0), bs=1), device='cpu')


def test_one_learner_batch_matches_reference(golden):
    t, js = golden['t'], golden['json']
    model = official_deeplabv2_depth(js['num_classes'], layers=js['layers'])
    load_official_state_dict(model, golden_state(golden, 'init_model.'))
    capture = _CaptureGrads()
    learn = dada_learner(_golden_dls(t), 'dada', model=model, n_classes=js['num_classes'],
                         lambdas=Lambdas(**js['lambdas']), cbs=[capture])
    learn.dada.discriminators['dada'].load_state_dict(golden_state(golden, 'init_d.'))
    learn.fit(1, lr=0.)

    terms = {k: v.total for k, v in learn.dada.terms.items()}
    ref = js['losses']
    for ours, theirs in [('seg', 'loss_seg_src'), ('depth', 'loss_depth_src'), ('adv', 'loss_adv_trg'),
                         ('d_src', 'loss_d_src'), ('d_trg', 'loss_d_trg')]:
        assert_close(terms[ours], torch.tensor(ref[theirs]), rtol=1e-4, atol=1e-5)
    assert_close(model.backbone.bn1.running_mean, t['bn1_running_mean_after'], rtol=1e-4, atol=1e-5)
    for prefix, grads in (('model', capture.model_grads), ('d', capture.d_grads)):
        names = [k.split('.', 1)[1] for k in t if k.startswith(f'gradnorm_{prefix}.')]
        assert set(names) == set(grads), f'{prefix}: parameters with gradients differ from the reference'
        for n in names:
            idx = t[f'gradidx_{prefix}.{n}'].long()
            assert_close(grads[n].flatten()[idx], t[f'gradval_{prefix}.{n}'], rtol=1e-3, atol=1e-9)
            assert_close(grads[n].norm().reshape(1), t[f'gradnorm_{prefix}.{n}'], rtol=1e-3, atol=1e-9)
