"""The warm start: one cached source-only stage of a recipe that every seed, and every method with the same
network, starts from; and the depth target's scale."""
from __future__ import annotations

import pytest
import torch

from dada_fastai.config import resolve_config
from dada_fastai.learner import method_config
from dada_fastai.runs import train, warm_start_key, warm_start_weights
from e2e import built_stages, tiny_options, tiny_pair


@pytest.fixture(scope='module')
def pair(tmp_path_factory):
    return tiny_pair(tmp_path_factory.mktemp('data'))


def test_warm_start_is_trained_once_and_shared(pair, tmp_path, monkeypatch):
    monkeypatch.setenv('DADA_FASTAI_CACHE', str(tmp_path / 'cache'))
    a = resolve_config(None, **tiny_options(*pair, warm_start=2, method='dada', seed=1))
    b = resolve_config(None, **tiny_options(*pair, warm_start=2, method='s3', seed=7, lambda_adv=0.5))
    assert warm_start_key(a) == warm_start_key(b)  # seed and adaptation settings do not change it
    path = warm_start_weights(a)
    assert path.is_file() and path.parent == tmp_path / 'cache' / 'warm_start'
    stamp = path.stat().st_mtime_ns
    assert warm_start_weights(b) == path and path.stat().st_mtime_ns == stamp  # reused, not retrained
    assert warm_start_key(resolve_config(None, **tiny_options(*pair, warm_start=2, fusion_bias=1.))) != warm_start_key(a)
    c = resolve_config(None, **tiny_options(*pair, warm_start=3))
    assert warm_start_weights(c) != path  # another recipe, another warm start
    d = resolve_config(None, **tiny_options(*pair, warm_start=2, method='advent'))
    plain = warm_start_weights(d)  # a network without the depth block has a warm start of its own
    assert plain != path and not any(k.startswith('depth') for k in torch.load(plain, weights_only=True))
    assert warm_start_weights(resolve_config(None, **tiny_options(*pair, warm_start=2, method='source_only'))) == plain
    assert warm_start_key(resolve_config(None, **tiny_options(*pair, warm_start=2, method='advent', fusion_bias=1.))) \
        == warm_start_key(d)  # a network without the depth block has no fusion gate


def test_every_method_starts_from_the_warm_start(pair, tmp_path, monkeypatch):
    monkeypatch.setenv('DADA_FASTAI_CACHE', str(tmp_path / 'cache'))
    from fastai.callback.core import Callback
    seen = {}

    class Snapshot(Callback):
        def before_fit(self):  # the first one: fastai's validate (the final evaluation) calls before_fit too
            seen.setdefault(self.learn.dada_config['method'],
                            {k: v.clone() for k, v in self.learn.model.state_dict().items()})

    configs = {}
    for method in ('source_only', 'advent', 'dada'):
        configs[method] = resolve_config(None, **tiny_options(*pair, warm_start=2, method=method, iters=1,
                                                              out=str(tmp_path / method)))
        train(configs[method], cbs=[Snapshot()])
    for method, cfg in configs.items():
        warm = torch.load(warm_start_weights(cfg), weights_only=True)
        state = seen[method_config(method)]
        assert state.keys() == warm.keys()
        assert all(torch.equal(state[k], warm[k]) for k in warm), method
    seen.clear()
    train(resolve_config(None, **tiny_options(*pair, iters=1, out=str(tmp_path / 'cold'))), cbs=[Snapshot()])
    cold = next(iter(seen.values()))
    warm = torch.load(warm_start_weights(configs['dada']), weights_only=True)
    assert not all(torch.equal(cold[k], warm[k]) for k in warm if k.endswith('weight'))


def test_depth_scale_scales_the_targets():
    from dada_fastai.learner import DADALoss
    from dada_fastai.losses import Lambdas
    seg = torch.randn(1, 3, 4, 4)
    mask = torch.zeros(1, 4, 4, dtype=torch.long)
    target = torch.rand(1, 1, 4, 4) * 500 + 10
    pred = target * 0.01 + 0.05  # right at the scaled depth, up to an offset
    plain, scaled = DADALoss(Lambdas(depth=1.)), DADALoss(Lambdas(depth=1.), depth_scale=0.01)
    plain((seg, pred), mask, target)
    scaled((seg, pred), mask, target)
    # an error of 0.05 everywhere: c = 0.2 x 0.05, past c berHu is (e^2 + c^2) / 2c = 0.13
    assert scaled.parts['depth'].item() == pytest.approx(0.13, rel=1e-4)
    assert plain.parts['depth'].item() > 100


def test_fusion_bias_reaches_the_network(pair):
    from dada_fastai.runs import build_run_learner
    learn = build_run_learner(resolve_config(None, **tiny_options(*pair, method='dada', fusion_bias=1.)))
    bias = learn.model.depth.dec.bias
    assert torch.equal(bias, torch.ones_like(bias))
    plain = build_run_learner(resolve_config(None, **tiny_options(*pair, method='dada')))
    assert not torch.equal(plain.model.depth.dec.bias, torch.ones_like(bias))  # PyTorch's default otherwise


def test_opt_and_head_lr_mult_choose_the_segmenters_optimizer(pair, tmp_path, monkeypatch):
    monkeypatch.setenv('DADA_FASTAI_CACHE', str(tmp_path / 'cache'))
    from dada_fastai.runs import build_run_learner
    sgd = resolve_config(None, **tiny_options(*pair, method='dada'))
    adamw = resolve_config(None, **tiny_options(*pair, method='dada', opt='adamw', lr=1e-3))
    assert sgd.opt == 'sgd'  # the paper's
    learn = build_run_learner(adamw)
    before = {k: v.clone() for k, v in learn.model.state_dict().items()}
    with learn.no_bar(), learn.no_logging():
        learn.fit_iters(1, lr=adamw.lr, schedule='constant')
    assert type(learn.opt.opt) is torch.optim.AdamW
    assert [g['lr'] for g in learn.opt.opt.param_groups] == pytest.approx([1e-3, 1e-2])  # the head at 10x
    assert any(not torch.equal(before[k], v) for k, v in learn.model.state_dict().items() if k.endswith('weight'))
    plain = build_run_learner(sgd)
    plain.create_opt()
    assert type(plain.opt.opt) is torch.optim.SGD
    assert warm_start_key(adamw)['opt'] == 'adamw' and 'opt' not in warm_start_key(sgd)  # SGD caches keep their key
    even = resolve_config(None, **tiny_options(*pair, method='dada', opt='adamw', lr=1e-3, head_lr_mult=1))
    learn = build_run_learner(even)
    with learn.no_bar(), learn.no_logging():
        learn.fit_iters(1, lr=even.lr, schedule='constant')
    assert [g['lr'] for g in learn.opt.opt.param_groups] == pytest.approx([1e-3, 1e-3])
    assert warm_start_key(even) != warm_start_key(adamw) and 'head_lr_mult' not in warm_start_key(adamw)


def test_warm_start_recipe_trains_the_warm_start_its_own_way(pair, tmp_path, monkeypatch):
    monkeypatch.setenv('DADA_FASTAI_CACHE', str(tmp_path / 'cache'))
    from dada_fastai.config import ConfigError
    stages = built_stages(monkeypatch)
    own = resolve_config(None, **tiny_options(*pair, warm_start=2, warm_start_recipe={'opt': 'adamw', 'lr': '1e-3',
                                                                                      'bs': 1}))
    same = resolve_config(None, **tiny_options(*pair, warm_start=2))
    assert warm_start_key(own) != warm_start_key(same)
    assert warm_start_weights(own) != warm_start_weights(same)
    assert [(s.opt, s.lr, s.bs, s.iters) for s in stages] == [('adamw', 1e-3, 1, 2), ('sgd', same.lr, same.bs, 2)]
    assert (own.opt, own.bs) == ('sgd', same.bs)  # the run itself keeps its recipe
    for bad in ({'iters': 5}, {'bs': 0}, {'opt': 'lion'}, ['opt']):
        with pytest.raises(ConfigError, match='warm-start-recipe'):
            resolve_config(None, **tiny_options(*pair, warm_start=2, warm_start_recipe=bad))


def test_warm_start_recipe_may_weigh_the_depth_loss_its_own_way(pair, tmp_path, monkeypatch):
    """`lambda_depth` in the warm-start recipe trains the depth network's warm start with that weight; a network
    without the depth block learns nothing from depth, so its warm start (and cache) is the recipe's without it."""
    monkeypatch.setenv('DADA_FASTAI_CACHE', str(tmp_path / 'cache'))
    stages = built_stages(monkeypatch)
    heavy = resolve_config(None, **tiny_options(*pair, warm_start=2, warm_start_recipe={'lambda_depth': 4}))
    same = resolve_config(None, **tiny_options(*pair, warm_start=2))
    assert warm_start_key(heavy)['recipe'] == {'lambda_depth': 4.}
    assert warm_start_weights(heavy) != warm_start_weights(same)
    assert [s.lambda_depth for s in stages] == [4., same.lambda_depth] and heavy.lambda_depth == same.lambda_depth
    for method in ('advent', 'source_only'):
        plain = dict(method=method, warm_start=2)
        assert warm_start_key(resolve_config(None, **tiny_options(*pair, **plain, warm_start_recipe={'lambda_depth': 4}))) \
            == warm_start_key(resolve_config(None, **tiny_options(*pair, **plain)))
    mixed = resolve_config(None, **tiny_options(*pair, method='advent', warm_start=2,
                                                warm_start_recipe={'lambda_depth': 4, 'lr': 1e-3}))
    assert warm_start_key(mixed)['recipe'] == {'lr': 1e-3}


def test_the_warm_start_reports_its_progress_like_the_main_stage(pair, tmp_path, monkeypatch, capsys):
    """Piped to a file, a first run's warm start prints progress lines of its own, not one line then silence."""
    monkeypatch.setenv('DADA_FASTAI_CACHE', str(tmp_path / 'cache'))
    train(resolve_config(None, **tiny_options(*pair, warm_start=4, iters=2, progress='lines', print_every=2,
                                              out=str(tmp_path / 'run'))))
    lines = capsys.readouterr().out.splitlines()
    stage = [ln for ln in lines if ln.startswith('warm start: iterations 0 to 4')]
    assert stage and any(ln.startswith('iter 2/4') for ln in lines[lines.index(stage[0]):])
    assert any(ln.startswith('training: iterations 0 to 2') for ln in lines)
