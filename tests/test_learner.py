"""The DADA Learner: methods and ablations, schedules, what trains and what stays put, metrics."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from fastai.callback.core import Callback
from fastai.callback.schedule import SchedCos, combine_scheds, combined_cos

from dada_fastai.data import dada_dataloaders
from dada_fastai.learner import METHODS, confusion_matrix, dada_learner, iou_from_confusion, method_config
from e2e import Poison, tiny_pair


@pytest.fixture(scope='module')
def dls(tmp_path_factory):
    pair = tiny_pair(tmp_path_factory.mktemp('data'))
    return dada_dataloaders(*pair, n_classes=7, source_size=(32, 48), target_size=(32, 64), bs=2, seed=0)


def _learner(dls, method='dada', **kwargs):
    torch.manual_seed(0)
    return dada_learner(dls, method, arch='test_resnet', ndf=8, **kwargs)


class _Hypers(Callback):
    """Record the learning rates of both parameter groups and of the discriminators at every step."""
    order = 100

    def before_fit(self):
        self.rows = []

    def after_step(self):
        d_opt = self.learn.dada.d_opt
        self.rows.append((self.opt.hypers[0]['lr'], self.opt.hypers[1]['lr'],
                          d_opt.hypers[0]['lr'] if d_opt is not None else None))


@pytest.mark.parametrize('method', ['source_only', 'advent', 's3', 's4', 's5', 's6', 'dada', 'depth_source_only'])
def test_each_method_and_ablation_runs_a_batch(dls, method):
    cfg = method_config(method)
    learn = _learner(dls, method)
    assert set(learn.dada.discriminators) == set(cfg.adapt)
    for kind, d in learn.dada.discriminators.items():
        assert d[0].in_channels == (1 if kind == 'depth' else 7)
    assert learn.model.has_depth == cfg.depth_block
    assert learn.model.feature_fusion == cfg.feature_fusion
    learn.fit_iters(1, schedule='constant')
    terms = {k: v.value for k, v in learn.dada.terms.items()}
    assert terms['seg'] is not None and np.isfinite(terms['seg'])
    assert (terms['depth'] is not None) == cfg.depth_block
    for kind in cfg.adapt:
        sfx = '' if len(cfg.adapt) == 1 else f'_{kind}'
        assert all(np.isfinite(terms[f'{t}{sfx}']) for t in ('adv', 'd_src', 'd_trg'))


def test_ablation_table_is_the_papers():
    assert METHODS['s1'] == METHODS['source_only'] and METHODS['s7'] == METHODS['dada']
    assert METHODS['s2'].adapt == ('surprisal',) and not METHODS['s2'].depth_block
    assert METHODS['s6'].adapt == ('surprisal', 'depth') and METHODS['s6'].feature_fusion
    assert METHODS['s4'].adapt == ('depth',) and not METHODS['s4'].feature_fusion
    with pytest.raises(ValueError, match='valid'):
        method_config('dada2')


def _snapshot(module):
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def test_what_trains_and_what_stays_put(dls):
    learn = _learner(dls, 'dada', lr=1e-2)
    before, d_before = _snapshot(learn.model), _snapshot(learn.dada.discriminators)
    learn.fit_iters(2, schedule='constant')
    after, d_after = _snapshot(learn.model), _snapshot(learn.dada.discriminators)
    for n, p in learn.model.named_parameters():
        changed = not torch.equal(before[n], after[n])
        assert changed == p.requires_grad, f'{n}: requires_grad={p.requires_grad} but changed={changed}'
    assert any('bn' in n and not p.requires_grad for n, p in learn.model.named_parameters())  # frozen BN affine
    assert all(not torch.equal(d_before[n], d_after[n]) for n in d_before)
    assert all(p.requires_grad for p in learn.dada.discriminators.parameters())


def test_source_only_ignores_the_target(dls):
    """Without adaptation the target images cannot change the segmenter."""
    learn_a = _learner(dls, 'source_only', lr=1e-2)
    learn_a.fit_iters(2, schedule='constant')

    class ScrambleTarget(Callback):
        order = 1

        def before_batch(self):
            if self.training:
                self.learn.xb = (self.xb[0], torch.rand_like(self.xb[1]))
    learn_b = _learner(dls, 'source_only', lr=1e-2, cbs=[ScrambleTarget()])
    learn_b.fit_iters(2, schedule='constant')
    for (n, a), b in zip(learn_a.model.state_dict().items(), learn_b.model.state_dict().values()):
        assert torch.equal(a, b), n


def _factor(schedule: str, pct: np.ndarray) -> np.ndarray:
    """What each schedule multiplies its peak rate by at `pct` of training."""
    if schedule == 'poly':  # the reference: (1 - i / N) ** 0.9
        return (1 - pct) ** 0.9
    if schedule == 'one_cycle':  # fastai's defaults: from peak / 25 up to the peak at 25%, then down to peak / 1e5
        return np.array([combined_cos(0.25, 1 / 25, 1., 1e-5)(p) for p in pct])
    if schedule == 'flat_cos':  # flat at the peak for 75%, then a cosine down to peak / 1e5
        return np.array([combined_cos(0.75, 1., 1., 1e-5)(p) for p in pct])
    return np.ones_like(pct)


@pytest.mark.parametrize('schedule', ['poly', 'one_cycle', 'flat_cos', 'constant'])
def test_discriminator_learning_rate_is_d_lr_times_the_schedule_factor(dls, schedule):
    """D's rate = d_lr x the segmenter's schedule factor (its rate over the schedule's peak), also when the fit's
    rate is not the one the learner was built with."""
    rec = _Hypers()
    learn = _learner(dls, 'dada', lr=1e-3, d_lr=1e-4, cbs=[rec])
    learn.fit_iters(5, schedule=schedule, lr=4e-3)
    rows = np.array(rec.rows, dtype=float)
    assert len(rows) == 5
    factor = _factor(schedule, np.arange(5) / 5)
    np.testing.assert_allclose(rows[:, 0], 4e-3 * factor, rtol=1e-6)  # the segmenter follows its schedule
    np.testing.assert_allclose(rows[:, 1], 10 * rows[:, 0])  # the head at 10x
    np.testing.assert_allclose(rows[:, 2], 1e-4 * factor, rtol=1e-6)  # the discriminators at d_lr x the factor


@pytest.mark.parametrize('fit', ['fit_one_cycle', 'fit_flat_cos', 'fit', 'fit_sgdr'])
def test_discriminator_learning_rate_in_fastais_fit_methods(dls, fit):
    rec = _Hypers()
    learn = _learner(dls, 'dada', lr=1e-3, d_lr=1e-4, cbs=[rec])
    if fit == 'fit_sgdr':  # two cosine cycles of one and two epochs
        learn.fit_sgdr(2, 1, 4e-3)
        n_epoch = 3
    else:
        getattr(learn, fit)(2, 4e-3)
        n_epoch = 2
    rows = np.array(rec.rows, dtype=float)
    n = n_epoch * len(dls.train)
    assert len(rows) == n
    pct = np.arange(n) / n
    if fit == 'fit_sgdr':
        factor = np.array([combine_scheds([1 / 3, 2 / 3], [SchedCos(1., 0.)] * 2)(p) for p in pct])
    else:
        factor = _factor({'fit_one_cycle': 'one_cycle', 'fit_flat_cos': 'flat_cos', 'fit': 'constant'}[fit], pct)
    np.testing.assert_allclose(rows[:, 0], 4e-3 * factor, rtol=1e-6)
    np.testing.assert_allclose(rows[:, 2], 1e-4 * factor, rtol=1e-6)


def test_plain_fit_and_fit_one_cycle_run_epochs(dls):
    learn = _learner(dls, 'dada')
    learn.fit(1, lr=1e-3)
    assert learn.train_iter == len(dls.train)
    learn.fit_one_cycle(1, 1e-3)
    assert learn.recorder.metric_names[1:4] == ['train_loss', 'valid_loss', 'miou']
    assert {'seg', 'depth', 'adv', 'd_src', 'd_trg'} <= set(learn.recorder.metric_names)


def test_validate_does_not_report_the_training_loss_terms(dls):
    """The loss-term columns are training means shown with the epoch's validation; `validate()` on its own has
    no training epoch, so they are None there, not the last epoch's values."""
    learn = _learner(dls, 'dada')
    learn.fit_iters(len(dls.train), schedule='constant')  # one whole epoch: it validates
    names = [m.name for m in learn.metrics]
    logged = dict(zip(names, learn.recorder.values[-1][2:]))  # after train_loss and valid_loss
    assert all(logged[k] is not None for k in learn.dada.terms), logged
    validated = dict(zip(names, learn.validate()[1:]))  # after valid_loss
    assert validated['miou'] is not None
    assert all(validated[k] is None for k in learn.dada.terms), validated


@pytest.mark.parametrize('mode', ['faithful', 'fast'])
def test_progress_table_values_stay_in_their_columns(dls, mode, capsys):
    """In a terminal the epoch table's columns are as wide as their names: a depth loss of 109.5237... once ran
    into the next column."""
    from fastprogress.fastprogress import ConsoleMasterBar
    learn = _learner(dls, 'dada', mode=mode)
    progress = learn.progress
    progress.mbar = ConsoleMasterBar(range(1))
    names = ['epoch', 'train_loss', 'valid_loss', 'miou', 'seg', 'depth', 'adv', 'time']
    values = [0, 1.234567, 2.5, 12.345678, 0.691822, 109.52377, 123456789.5, '00:01']
    capsys.readouterr()
    progress._write_stats(names)
    progress._write_stats(values)
    header, row = capsys.readouterr().out.splitlines()[-2:]
    cells = row.split()
    assert len(cells) == len(names), row
    for name, cell, value in zip(names, cells, values):
        start = header.index(name)
        assert row[start:start + len(cell)] == cell, f'{name}: {row!r} under {header!r}'  # starts under its name
        if isinstance(value, float):
            assert float(cell) == pytest.approx(value, rel=1e-4)


def test_fit_iters_counts_exactly(dls):
    rec = _Hypers()
    learn = _learner(dls, 'advent', cbs=[rec])
    learn.fit_iters(len(dls.train) + 1)  # one epoch and one iteration more
    assert len(rec.rows) == len(dls.train) + 1


def test_lr_find_works(dls):
    learn = _learner(dls, 'dada')
    res = learn.lr_find(num_it=6, show_plot=False)
    assert res.valley > 0


def test_evaluate_matches_a_direct_computation(dls):
    learn = _learner(dls, 'dada')
    res = learn.evaluate()
    total = torch.zeros(7, 7, dtype=torch.long)
    learn.model.eval()
    for x, y in dls.valid:
        pred, _ = learn.predict_batch(x, y.shape[-2:])
        total += confusion_matrix(pred.cpu(), y.cpu(), 7)
    iou = iou_from_confusion(total)
    assert res['miou'] == pytest.approx(float(np.nanmean(iou)))
    assert res['miou13'] is None
    assert list(res['per_class']) == list(dls.protocol.classes)


def test_miou13_for_sixteen_classes(tmp_path):
    pair = tiny_pair(tmp_path)
    dls16 = dada_dataloaders(*pair, n_classes=16, source_size=(32, 48), target_size=(32, 64), bs=2)
    learn = _learner(dls16, 'advent')
    res = learn.evaluate()
    iou = np.array(list(res['per_class'].values()), dtype=float)
    keep = [i for i, c in enumerate(dls16.protocol.classes) if c not in ('wall', 'fence', 'pole')]
    expected = np.nanmean(iou[keep]) if np.isfinite(iou[keep]).any() else None
    assert res['miou13'] == pytest.approx(expected, nan_ok=True)


def test_show_results_draws_four_columns(dls):
    import matplotlib
    matplotlib.use('Agg')
    learn = _learner(dls, 'dada')
    axs = learn.show_results(max_n=2)
    assert len(axs) == 8 and all(ax.images for ax in axs)


def test_non_finite_loss_stops_or_skips(dls):
    from dada_fastai.callbacks import NonFiniteLoss
    learn = _learner(dls, 'dada', cbs=[Poison()])
    with pytest.raises(NonFiniteLoss, match='iteration 2'):
        learn.fit_iters(3, schedule='constant')
    learn = _learner(dls, 'dada', cbs=[Poison()], on_nan='skip')
    with pytest.warns(UserWarning, match='skipping iteration 2'):
        learn.fit_iters(3, schedule='constant')
    assert learn.non_finite_guard.skipped == [2]
    assert all(torch.isfinite(p).all() for p in learn.model.parameters())
