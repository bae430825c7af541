"""Fast mode changes how DADA is computed, never what: same losses and gradients as the faithful mode."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from dada_fastai.callbacks import uses_batch_statistics
from dada_fastai.data import dada_dataloaders
from dada_fastai.learner import dada_learner
from e2e import Poison, tiny_pair
from test_learner_parity import _CaptureGrads, _golden_dls
from conftest import golden_state
from dada_fastai.losses import Lambdas
from dada_fastai.model import load_official_state_dict, official_deeplabv2_depth


@pytest.fixture(scope='module')
def pair(tmp_path_factory):
    return tiny_pair(tmp_path_factory.mktemp('data'))


def _terms_after_steps(pair, mode: str, precision: str | None, method: str = 'dada', steps: int = 4,
                       source_size=(32, 48), bn: str = 'batch', joint: bool = True) -> dict:
    torch.manual_seed(0)
    dls = dada_dataloaders(*pair, n_classes=7, source_size=source_size, target_size=(32, 64), bs=2, seed=0)
    learn = dada_learner(dls, method, arch='test_resnet', ndf=8, mode=mode, precision=precision, lr=5e-3, bn=bn)
    learn.dada.joint = joint
    forwards = []  # batch size of every training forward of the segmenter
    hook = learn.model.register_forward_hook(lambda m, i, o: forwards.append(len(i[0])) if m.training else None)
    bn_before = {k: v.clone() for k, v in learn.model.state_dict().items() if 'running' in k}
    learn.fit_iters(steps, schedule='poly')
    hook.remove()
    terms = {k: v.value for k, v in learn.dada.terms.items()}
    params = torch.cat([p.detach().flatten() for p in learn.model.parameters()])
    bn_moved = any(not torch.equal(v, learn.model.state_dict()[k]) for k, v in bn_before.items())
    return {'terms': terms, 'params': params, 'n_mp': len([c for c in learn.cbs if c.name == 'mixed_precision']),
            'forwards': forwards, 'bn_moved': bn_moved}


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


def test_frozen_bn_joins_source_and_target_in_one_forward(pair):
    """With BatchNorm frozen and both domains at one size, fast mode runs one forward of both per iteration,
    and still computes what the faithful mode (two forwards) computes."""
    faithful = _terms_after_steps(pair, 'faithful', None, source_size=(32, 64), bn='frozen')
    joint = _terms_after_steps(pair, 'fast', 'fp32', source_size=(32, 64), bn='frozen')
    assert faithful['forwards'] == [2, 2] * 4  # source, then target, each a batch of 2
    assert joint['forwards'] == [4] * 4  # one forward of both
    assert not faithful['bn_moved'] and not joint['bn_moved']  # running statistics frozen
    for k in faithful['terms']:
        assert joint['terms'][k] == pytest.approx(faithful['terms'][k], rel=1e-4), k
    assert_close(joint['params'], faithful['params'], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize('bn, source_size', [('batch', (32, 64)), ('frozen', (32, 48))])
def test_forwards_stay_separate_where_joining_would_change_the_result(pair, bn, source_size):
    """BatchNorm on batch statistics would normalise each image with the other domain's statistics, and
    domains of different sizes cannot share a batch: then source and target go through separately."""
    res = _terms_after_steps(pair, 'fast', 'fp32', source_size=source_size, bn=bn, steps=2)
    assert res['forwards'] == [2, 2] * 2
    assert res['bn_moved'] == (bn == 'batch')


def test_uses_batch_statistics():
    bn = nn.BatchNorm2d(4)
    assert uses_batch_statistics(nn.Sequential(nn.Conv2d(3, 4, 3), bn))
    bn.eval()
    assert not uses_batch_statistics(nn.Sequential(nn.Conv2d(3, 4, 3), bn))
    assert uses_batch_statistics(nn.BatchNorm2d(4, track_running_stats=False).eval())  # always the batch's
    assert not uses_batch_statistics(nn.Sequential(nn.GroupNorm(2, 4), nn.LayerNorm(4)))
    from timm.layers import EvoNorm2dB0, EvoNorm2dS0
    assert uses_batch_statistics(EvoNorm2dB0(8)) and not uses_batch_statistics(EvoNorm2dB0(8).eval())
    assert not uses_batch_statistics(EvoNorm2dS0(8))  # per-sample statistics


def test_frozen_batchnorm_covers_sync_and_non_affine_layers():
    """`bn='frozen'` puts every frozen BatchNorm in eval mode during training, SyncBatchNorm (distributed
    training) and BatchNorm without affine parameters included; trainable ones stay in training mode."""
    from dada_fastai.callbacks import FrozenBatchNorm
    model = nn.Sequential(nn.SyncBatchNorm(4), nn.BatchNorm2d(4, affine=False), nn.BatchNorm2d(4))
    for p in model[0].parameters():
        p.requires_grad_(False)
    learn = type('L', (), {'model': model})()
    cb = FrozenBatchNorm()
    cb.learn = learn
    model.train()
    cb.before_train()
    assert [m.training for m in model] == [False, False, True]


@pytest.mark.parametrize('mode, tf32', [('faithful', False), ('fast', True)])
def test_cuda_settings_during_a_fit_and_restored_after(pair, mode, tf32):
    """Faithful mode keeps float32 convolutions IEEE (PyTorch runs them as TF32 on CUDA by default); fast mode
    allows TF32; both turn cuDNN's autotuner on (as the reference's script does), unless deterministic
    algorithms are asked for; the process's settings come back after the fit, also when it fails."""
    from fastai.callback.core import Callback
    b = torch.backends
    seen = []

    def flags():
        return b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32, b.cudnn.benchmark

    class Flags(Callback):
        def after_batch(self):
            seen.append(flags())

    class Interrupt(Callback):
        def before_batch(self):
            raise RuntimeError('interrupted')

    before = flags()
    b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32, b.cudnn.benchmark = (not tf32), (not tf32), False
    try:
        dls = dada_dataloaders(*pair, n_classes=7, source_size=(32, 48), target_size=(32, 64), bs=2, seed=0)
        learn = dada_learner(dls, 'dada', arch='test_resnet', ndf=8, mode=mode, precision='fp32', cbs=[Flags()])
        learn.fit_iters(1)
        assert seen and all(s == (tf32, tf32, True) for s in seen)
        assert flags() == (not tf32, not tf32, False)
        seen.clear()
        learn.validate()  # validation (`evaluate`, `get_preds`) computes with the same settings
        assert seen and all(s == (tf32, tf32, True) for s in seen)
        assert flags() == (not tf32, not tf32, False)
        with pytest.raises(RuntimeError, match='interrupted'):  # also when an error ends the fit
            learn.fit_iters(1, cbs=[Interrupt()])
        assert flags() == (not tf32, not tf32, False)
        seen.clear()
        torch.use_deterministic_algorithms(True, warn_only=True)
        learn.fit_iters(1)
        assert seen and all(s == (tf32, tf32, False) for s in seen)  # no autotuning: deterministic
    finally:
        torch.use_deterministic_algorithms(False)
        b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32, b.cudnn.benchmark = before


def _fp16_learner(pair, cbs=()):
    torch.manual_seed(0)
    dls = dada_dataloaders(*pair, n_classes=7, source_size=(32, 48), target_size=(32, 64), bs=2, seed=0)
    return dada_learner(dls, 'dada', arch='test_resnet', ndf=8, mode='fast', precision='fp16', lr=5e-3,
                        cbs=list(cbs))


def test_fast_fp16_with_its_gradient_scaler_stays_close_to_faithful(pair):
    faithful = _terms_after_steps(pair, 'faithful', None)
    learn = _fp16_learner(pair)
    d0 = [p.detach().clone() for p in learn.dada.discriminators.parameters()]
    learn.fit_iters(4, schedule='poly')
    assert not torch.is_autocast_enabled('cpu')
    assert any(not torch.equal(a, b) for a, b in zip(d0, learn.dada.discriminators.parameters()))  # D stepped
    for k, t in learn.dada.terms.items():
        assert t.value == pytest.approx(faithful['terms'][k], rel=3e-2), k


def test_fp16_discriminator_overflow_skips_its_step_and_lowers_the_scale(pair):
    """An overflow in the discriminators' scaled gradients skips their step (not the segmenter's, whose
    gradients are finite) and makes the shared scaler back off."""
    from fastai.callback.core import Callback

    class Watch(Callback):
        order = 99  # after DADATrainer's and MixedPrecision's after_step

        def before_fit(self):
            self.scales, self.d_params, self.seg_params = [], [], []

        def after_step(self):
            self.scales.append(self.learn.scaler.get_scale())
            self.d_params.append([p.detach().clone() for p in self.learn.dada.discriminators.parameters()])
            self.seg_params.append(self.learn.model.classifier.convs[0].weight.detach().clone())

    watch = Watch()
    learn = _fp16_learner(pair, cbs=[watch])
    d0 = [p.detach().clone() for p in learn.dada.discriminators.parameters()]
    seg0 = learn.model.classifier.convs[0].weight.detach().clone()
    first = next(learn.dada.discriminators.parameters())
    calls = []

    def overflow_once(grad):
        calls.append(1)
        return grad * float('inf') if len(calls) == 1 else grad  # fast mode: one D backward per iteration

    first.register_hook(overflow_once)
    learn.fit_iters(2, schedule='constant')
    assert all(torch.equal(a, b) for a, b in zip(d0, watch.d_params[0]))  # D's first step skipped
    assert not torch.equal(seg0, watch.seg_params[0])  # the segmenter stepped
    assert watch.scales[0] < 65536.0  # the scale backed off after the overflow
    assert any(not torch.equal(a, b) for a, b in zip(watch.d_params[0], watch.d_params[1]))  # then D steps


def test_compiled_fast_mode_computes_what_eager_fast_mode_does(pair):
    """`compile` (here through AOT autograd without code generation, to keep the test quick) trains on
    fastai's tensor subclasses and gives the eager losses and weights."""
    eager = _terms_after_steps(pair, 'fast', 'fp32', steps=2)
    torch.manual_seed(0)
    dls = dada_dataloaders(*pair, n_classes=7, source_size=(32, 48), target_size=(32, 64), bs=2, seed=0)
    learn = dada_learner(dls, 'dada', arch='test_resnet', ndf=8, mode='fast', precision='fp32', lr=5e-3,
                         compile={'backend': 'aot_eager'})
    learn.fit_iters(2, schedule='poly')
    assert hasattr(learn.model.backbone, '_compiled_call_impl') and learn.model.backbone._compiled_call_impl
    for k, t in learn.dada.terms.items():
        assert t.value == pytest.approx(eager['terms'][k], rel=1e-4), k
    params = torch.cat([p.detach().flatten() for p in learn.model.parameters()])
    assert_close(params, eager['params'], rtol=1e-4, atol=1e-6)


def test_precision_and_compile_need_the_fast_mode(pair):
    dls = dada_dataloaders(*pair, n_classes=7, source_size=(32, 48), target_size=(32, 64), bs=2, seed=0)
    for kwargs in ({'precision': 'bf16'}, {'compile': True}):
        with pytest.raises(ValueError, match='mode="fast"'):
            dada_learner(dls, 'dada', arch='test_resnet', ndf=8, **kwargs)


def test_fp16_non_finite_loss_stops_even_between_checks(pair):
    """fp16's scaler would skip the overflowing step silently, and fast mode reads the flag every 50
    iterations only: the check still stops the run, at the latest at the end of the epoch."""
    from dada_fastai.callbacks import NonFiniteLoss
    learn = _fp16_learner(pair, cbs=[Poison()])
    assert learn.non_finite_guard.every == 50
    with pytest.raises(NonFiniteLoss, match='iterations 1-2'):
        learn.fit_iters(3, schedule='constant')


def test_fp16_non_finite_loss_skipped(pair):
    """Skipping in fp16: neither optimizer steps on the poisoned iteration, the loss scale is left as it
    was, and training goes on with finite weights."""
    dls = dada_dataloaders(*pair, n_classes=7, source_size=(32, 48), target_size=(32, 64), bs=2, seed=0)
    learn = dada_learner(dls, 'dada', arch='test_resnet', ndf=8, mode='fast', precision='fp16', lr=5e-3,
                         on_nan='skip', cbs=[Poison()])
    with pytest.warns(UserWarning, match='skipping iteration 2'):
        learn.fit_iters(3, schedule='constant')
    assert learn.non_finite_guard.skipped == [2]
    assert all(torch.isfinite(p).all() for p in learn.model.parameters())
    assert all(torch.isfinite(p).all() for p in learn.dada.discriminators.parameters())


def test_non_finite_loss_in_the_last_iterations_of_a_budget_stops_the_run(pair):
    """Fast mode reads the flag every 50 iterations: a NaN at the last iteration, where the budget ends the fit
    in the middle of an epoch, still stops the run (before the final checkpoint)."""
    from dada_fastai.callbacks import NonFiniteLoss
    dls = dada_dataloaders(*pair, n_classes=7, source_size=(32, 48), target_size=(32, 64), bs=2, seed=0)
    learn = dada_learner(dls, 'dada', arch='test_resnet', ndf=8, mode='fast', precision='fp32',
                         cbs=[Poison(at=2)])
    assert len(dls.train) == 2  # 3 iterations end in the middle of the second epoch
    with pytest.raises(NonFiniteLoss, match='iteration 3'):
        learn.fit_iters(3, schedule='constant')


def test_checkpoints_never_hold_weights_after_a_non_finite_loss(pair, tmp_path):
    from dada_fastai.callbacks import NonFiniteLoss
    from dada_fastai.checkpoint import Checkpointer
    dls = dada_dataloaders(*pair, n_classes=7, source_size=(32, 48), target_size=(32, 64), bs=2, seed=0)
    learn = dada_learner(dls, 'dada', arch='test_resnet', ndf=8, mode='fast', precision='fp32',
                         cbs=[Poison(at=0), Checkpointer(tmp_path, every=1)])
    with pytest.raises(NonFiniteLoss, match='iteration 1'):
        learn.fit_iters(4, schedule='constant')
    assert not (tmp_path / 'last.pth').exists()


def test_lr_find_explores_divergence_without_the_non_finite_check(pair):
    dls = dada_dataloaders(*pair, n_classes=7, source_size=(32, 48), target_size=(32, 64), bs=2, seed=0)
    learn = dada_learner(dls, 'dada', arch='test_resnet', ndf=8, cbs=[Poison(at=3)])
    from dada_fastai.callbacks import NonFiniteLoss
    learn.lr_find(num_it=6, show_plot=False)  # a NaN during the sweep is no error: the sweep looks for it
    with pytest.raises(NonFiniteLoss, match='iteration 4'):  # training checks again
        learn.fit_iters(4, schedule='constant')


# ---------------------------------------------------------------------------------------------------------
# Native bf16 on CPUs: the default precision of fast mode where the processor computes bf16
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('caps, expected', [({'avx512_bf16': True}, 'bf16'), ({'amx_bf16': True}, 'bf16'),
                                            ({'avx512_bf16': False, 'avx2': True}, 'fp32'), ({}, 'fp32')])
def test_fast_mode_on_cpu_defaults_to_bf16_where_the_processor_has_it(pair, monkeypatch, caps, expected):
    from dada_fastai.learner import cpu_has_native_bf16, default_precision
    monkeypatch.setattr(torch.cpu, 'get_capabilities', lambda: caps)
    assert cpu_has_native_bf16() == (expected == 'bf16')
    assert default_precision('cpu') == expected and default_precision('cuda') == 'bf16'
    dls = dada_dataloaders(*pair, n_classes=7, source_size=(32, 48), target_size=(32, 64), bs=2, seed=0, device='cpu')
    learn = dada_learner(dls, 'dada', arch='test_resnet', ndf=8, mode='fast')
    mp = [c for c in learn.cbs if c.name == 'mixed_precision']
    assert (len(mp) == 1 and mp[0].amp_mode.value == 'bf16') if expected == 'bf16' else not mp


def test_bf16_autocast_covers_the_discriminators_on_cpu(pair):
    """The discriminators' losses are computed under the segmenter's bf16 autocast, as on a GPU."""
    from fastai.callback.core import Callback
    seen = []

    class Spy(Callback):
        order = 99

        def after_batch(self):
            if self.training:
                seen.append(self.learn.dada._autocast().fast_dtype)

    dls = dada_dataloaders(*pair, n_classes=7, source_size=(32, 48), target_size=(32, 64), bs=2, seed=0)
    learn = dada_learner(dls, 'dada', arch='test_resnet', ndf=8, mode='fast', precision='bf16', cbs=[Spy()])
    outs = []
    hook = learn.dada.discriminators['dada'].register_forward_hook(lambda m, i, o: outs.append(o.dtype))
    learn.fit_iters(2, schedule='constant')
    hook.remove()
    assert seen == [torch.bfloat16] * 2
    assert outs and all(d == torch.bfloat16 for d in outs)  # 3 discriminator passes per iteration, all in bf16


@pytest.mark.parametrize('method', ['source_only', 'advent'])
def test_bf16_trains_networks_without_the_depth_block(pair, method):
    """Mixed precision hands the loss a (seg, None) prediction when there is no depth block."""
    dls = dada_dataloaders(*pair, n_classes=7, source_size=(32, 48), target_size=(32, 64), bs=2, seed=0)
    learn = dada_learner(dls, method, arch='test_resnet', ndf=8, mode='fast', precision='bf16', lr=5e-3)
    learn.fit_iters(2, schedule='constant')
    assert learn.dada.terms['seg'].value is not None and learn.dada.terms['depth'].value is None


def test_bf16_non_finite_loss_stops_the_run(pair):
    from dada_fastai.callbacks import NonFiniteLoss
    dls = dada_dataloaders(*pair, n_classes=7, source_size=(32, 48), target_size=(32, 64), bs=2, seed=0)
    learn = dada_learner(dls, 'dada', arch='test_resnet', ndf=8, mode='fast', precision='bf16',
                         cbs=[Poison(at=1)])
    with pytest.raises(NonFiniteLoss, match='iterations 1-2'):
        learn.fit_iters(3, schedule='constant')
