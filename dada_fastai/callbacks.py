"""Callbacks that make a fastai Learner train DADA: the adversarial step, the head's 10x learning rate,
iteration budgets and the reference's poly schedule."""
from __future__ import annotations

import copy
import warnings
from contextlib import ExitStack, contextmanager, nullcontext

import torch
from fastai.callback.core import Callback, CancelFitException, CancelStepException
from fastai.callback.fp16 import AMPMode, MixedPrecision
from fastai.callback.progress import ProgressCallback
from fastai.learner import Metric
from fastai.optimizer import OptimWrapper
from torch import nn

from .losses import (Lambdas, adaptation_map, discriminator_loss, fooling_loss, set_requires_grad, upsample,
                     SOURCE_LABEL, TARGET_LABEL)

__all__ = ['TrainTerm', 'DADATrainer', 'HeadLR', 'IterBudget', 'SetEpoch', 'poly_decay', 'NonFiniteLoss',
           'NonFiniteGuard', 'uses_batch_statistics',
           'CudaBackend', 'tf32', 'cudnn_autotuner', 'FrozenBatchNorm', 'DeviceMixedPrecision', 'ThrottledProgress']


class TrainTerm(Metric):
    """A loss term averaged over the training batches of an epoch, shown as a column of the progress table.
    Filled by `DADATrainer` (or the loss function): accumulating on device, read once per epoch."""

    def __init__(self, name: str):
        self._name, self.total, self.count = name, 0., 0

    def reset(self):  # reset by `DADATrainer.before_train`, not by the validation loop
        pass

    def clear(self):
        self.total, self.count = 0., 0

    def add(self, value: torch.Tensor) -> None:
        self.total, self.count = self.total + value.detach(), self.count + 1

    def accumulate(self, learn):
        pass

    @property
    def value(self):
        if not self.count:
            return None
        return float(self.total) / self.count

    @property
    def name(self):
        return self._name


def poly_decay(start: float, power: float = 0.9):
    """The reference's learning-rate schedule: start * (1 - pos) ** power (pos = fraction of training)."""
    def _inner(pos: float) -> float:
        return start * max(1. - pos, 0.) ** power
    return _inner


class HeadLR(Callback):
    """Keep the head's learning rate (parameter group 1) at `mult` times the backbone's (group 0), whatever
    schedule sets the latter: the reference trains the classifier and depth block at 10x."""
    order = 61  # after ParamScheduler

    def __init__(self, mult: float = 10.):
        self.mult = mult

    def _apply(self):
        lrs = [h['lr'] for h in self.learn.opt.hypers]
        if len(lrs) > 1 and self.mult != 1:
            lrs[1] = lrs[0] * self.mult
            self.learn.opt.set_hypers(lr=lrs)

    def before_fit(self):
        if self.learn.opt is not None:
            self._apply()

    def before_batch(self):
        if self.training:
            self._apply()


class IterBudget(Callback):
    """Train for exactly `n_iters` iterations: schedules run over the budget, and training stops when it
    is spent (the last epoch may be partial)."""
    order = 55  # after TrainEvalCallback, before ParamScheduler

    def __init__(self, n_iters: int):
        self.n_iters = n_iters

    def before_batch(self):
        if self.training:
            if self.train_iter >= self.n_iters:  # never an iteration past the budget
                raise CancelFitException()
            self.learn.pct_train = min(self.train_iter / self.n_iters, 1.)

    def after_batch(self):
        # a budget spent on the epoch's last batch lets the epoch validate and log; mid-epoch, training stops
        if self.training and self.train_iter >= self.n_iters and self.iter + 1 < self.n_iter:
            raise CancelFitException()


def finding_lr(learn) -> bool:
    """Whether the fit that starts is fastai's `lr_find` sweep."""
    from fastai.callback.schedule import LRFinder
    return any(isinstance(cb, LRFinder) for cb in learn.cbs)


class SetEpoch(Callback):
    """Tell the paired training DataLoader which epoch starts, so its shuffle and pairing are seeded by it."""
    order = -5

    def before_train(self):
        dl = getattr(self.dl, 'dl', self.dl)  # inside fastai's DistributedDL when distributed
        if hasattr(dl, 'set_epoch'):
            dl.set_epoch(self.epoch)


class DADATrainer(Callback):
    """The adversarial half of a DADA iteration, around fastai's source step.

    fastai computes the source forward, the source loss and its backward; this callback then runs, in the
    reference's order, the target forward with the frozen discriminators and the fooling loss, and the
    discriminators' own losses on detached source and target maps; the discriminators step with their own
    optimizer (Adam) after the segmenter, at a learning rate that follows the segmenter's schedule.
    `discriminators` maps an adaptation map ('surprisal', 'depth', 'dada') to its discriminator; empty for
    source-only training (the target image is then ignored). `fused=True` (fast mode) computes the same
    gradients with two backward passes instead of four, holding the source and target graphs at once; with
    `joint=True` it also runs source and target through the segmenter in one forward (one batch of both)
    whenever that computes the same thing (up to the random draws of dropout or stochastic depth, where a
    backbone has them): no normalisation layer uses batch statistics (BatchNorm frozen, or none at all) and
    both domains come at the same size. `joined` tells whether the last batch was."""
    order = 5

    @property
    def name(self) -> str:
        return 'dada'  # reachable as `learn.dada`

    def __init__(self, discriminators: dict[str, nn.Module] | nn.ModuleDict, lambdas: Lambdas = Lambdas(),
                 d_lr: float = 1e-4, d_betas: tuple[float, float] = (0.9, 0.99), fused: bool = False,
                 joint: bool = True):
        self.discriminators = discriminators if isinstance(discriminators, nn.ModuleDict) else nn.ModuleDict(discriminators)
        self.lambdas, self.d_lr, self.d_betas = lambdas, d_lr, d_betas
        self.fused = fused  # fast mode: 2 backward passes (source + fooling, then all D losses) instead of 4
        self.joint = joint  # fast mode: one forward for source and target where that changes nothing
        self.can_join, self.joined, self.n_src, self.pred_t = False, False, None, None
        self.d_opt = None
        self.terms = {k: TrainTerm(k) for k in self.term_names()}
        self.batch_terms: dict[str, torch.Tensor] = {}  # this iteration's loss terms

    def term_names(self) -> list[str]:
        """Names of the loss terms this configuration records."""
        names = ['seg', 'depth']
        for kind in self.discriminators:
            sfx = '' if len(self.discriminators) == 1 else f'_{kind}'
            names += [f'adv{sfx}', f'd_src{sfx}', f'd_trg{sfx}']
        return names

    def _record(self, name: str, value: torch.Tensor, kind: str | None = None) -> None:
        key = name if kind is None or len(self.discriminators) == 1 else f'{name}_{kind}'
        self.batch_terms[key] = value.detach()
        self.terms[key].add(value)

    # -- set-up -------------------------------------------------------------------------------------------
    def create_d_opt(self) -> None:
        """Adam over all discriminators, wrapped so fastai can set its learning rate."""
        params = [p for d in self.discriminators.values() for p in d.parameters()]
        if params:
            self.d_opt = OptimWrapper(params, torch.optim.Adam, lr=self.d_lr, betas=self.d_betas)

    def before_fit(self):
        self.discriminators.to(self.dls.device)
        if self.d_opt is None:
            self.create_d_opt()
        hyp = self.learn.opt.hypers if self.learn.opt is not None else [{'lr': 1.}]
        self.lr_ref = hyp[0]['lr'] or 1.
        # lr_find restores the segmenter and its optimizer afterwards; the discriminators are this callback's
        self.before_lr_find = copy.deepcopy(self.state_dict()) if finding_lr(self.learn) else None

    def after_fit(self):
        if getattr(self, 'before_lr_find', None) is not None:
            self.load_state_dict(self.before_lr_find)
            self.before_lr_find = None

    def before_train(self):
        for t in self.terms.values():
            t.clear()
        self.discriminators.train()
        # after TrainEvalCallback and FrozenBatchNorm have set the modules' modes for this epoch
        self.can_join = (self.fused and self.joint and bool(self.discriminators)
                         and not uses_batch_statistics(self.learn.model))

    # -- one iteration ------------------------------------------------------------------------------------
    def before_batch(self):
        if not self.training:
            return
        x_src, self.x_trg = self.learn.xb[0], self.learn.xb[1]
        self.joined = self.can_join and x_src.shape[1:] == self.x_trg.shape[1:]
        self.n_src, self.pred_t = (len(x_src), None) if self.joined else (None, None)
        self.learn.xb = (torch.cat([x_src, self.x_trg]),) if self.joined else (x_src,)
        self.batch_terms = {}
        for d in self.discriminators.values():
            set_requires_grad(d, False)

    def after_pred(self):
        """Split a joint forward's predictions: the source's go on to fastai's loss, the target's are kept."""
        if not self.training or not self.joined:
            return
        n = self.n_src
        seg, depth = self.learn.pred
        self.learn.pred = (seg[:n], depth[:n] if depth is not None else None)
        self.pred_t = (seg[n:], depth[n:] if depth is not None else None)

    def _autocast(self):
        """The mixed-precision context of fastai's `MixedPrecision` when it is on, else a no-op."""
        mp = getattr(self.learn, 'mixed_precision', None)
        ac = getattr(mp, 'autocast', None)
        # a fresh context each time: re-entering fastai's own object would corrupt the state it restores
        return torch.autocast(ac.device, dtype=ac.fast_dtype) if ac is not None else nullcontext()

    def _scaled(self, loss: torch.Tensor) -> torch.Tensor:
        scaler = getattr(self.learn, 'scaler', None)
        return scaler.scale(loss) if scaler is not None else loss

    def _target_losses(self) -> torch.Tensor:
        """Target forward with the discriminators frozen; returns lambda_adv x the fooling losses."""
        size_t = self.x_trg.shape[-2:]
        if self.pred_t is not None:  # computed by the joint forward
            (seg_t, depth_t), self.pred_t = self.pred_t, None
        else:
            with self._autocast():
                seg_t, depth_t = self.learn.model(self.x_trg)
        up_seg_t = upsample(seg_t.float(), size_t)
        up_depth_t = upsample(depth_t.float(), size_t) if depth_t is not None else None
        self.maps_t, adv = {}, 0.
        for kind, d in self.discriminators.items():
            self.maps_t[kind] = adaptation_map(up_seg_t, up_depth_t, kind)
            with self._autocast():
                loss = fooling_loss(d, self.maps_t[kind]).float()
            self._record('adv', loss, kind)
            adv = adv + loss
        return adv * self.lambdas.adv

    def _discriminator_backward(self) -> None:
        """The discriminators' losses on detached source and target maps (one backward each, or one in all
        when `fused`)."""
        seg_s, depth_s = self.learn.pred
        size_s = self.learn.yb[0].shape[-2:]
        with torch.no_grad():
            up_seg_s = upsample(seg_s.detach().float(), size_s)
            up_depth_s = upsample(depth_s.detach().float(), size_s) if depth_s is not None else None
        total = 0.
        for kind, d in self.discriminators.items():
            set_requires_grad(d, True)
            with self._autocast():
                loss_src = discriminator_loss(d, adaptation_map(up_seg_s, up_depth_s, kind), SOURCE_LABEL).float()
                loss_trg = discriminator_loss(d, self.maps_t[kind], TARGET_LABEL).float()
            self._record('d_src', loss_src, kind)
            self._record('d_trg', loss_trg, kind)
            if self.fused:
                total = total + loss_src + loss_trg
            else:
                self._scaled(loss_src).backward()
                self._scaled(loss_trg).backward()
        if self.fused:
            self._scaled(total).backward()

    def after_loss(self):
        if not self.training:
            return
        parts = getattr(self.loss_func, 'parts', {})
        for name in ('seg', 'depth'):
            if name in parts:
                self._record(name, parts[name])
        if self.fused and self.discriminators:  # one backward for the source and fooling losses
            self.learn.loss_grad = self.learn.loss_grad + self._target_losses()

    def after_backward(self):
        if not self.training or not self.discriminators:
            return
        if not self.fused:  # the reference's order: source backward (done), fooling backward, then D
            self._scaled(self._target_losses()).backward()
        self._discriminator_backward()

    def after_step(self):
        if self.d_opt is None or not self.training:
            return
        if not any(p.grad is not None for g in self.d_opt.param_lists for p in g):
            return  # the iteration was skipped (non-finite loss): nothing to step
        ratio = float(self.learn.opt.hypers[0]['lr']) / self.lr_ref
        self.d_opt.set_hyper('lr', self.d_lr * ratio)
        scaler = getattr(self.learn, 'scaler', None)
        if scaler is not None and scaler.is_enabled():  # skips the step when the scaled gradients overflowed
            scaler.step(self.d_opt.opt)
            self.learn.scaler_stepped = True
        else:
            self.d_opt.step()
        self.d_opt.zero_grad()

    def after_cancel_batch(self):
        if self.d_opt is not None:
            self.d_opt.zero_grad()

    # -- state for checkpoints ----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Discriminators' weights and the optimizer state, for checkpoints."""
        return {'discriminators': self.discriminators.state_dict(),
                'd_opt': self.d_opt.state_dict() if self.d_opt is not None else None}

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` saved (creates the optimizer when needed)."""
        self.discriminators.load_state_dict(state['discriminators'])
        if state.get('d_opt') is not None:
            if self.d_opt is None:
                self.create_d_opt()
            self.d_opt.load_state_dict(state['d_opt'])



def uses_batch_statistics(model: nn.Module) -> bool:
    """Whether some normalisation layer of `model` normalises with the statistics of the batch in its current
    mode, so that what one image gets depends on the other images of the batch: a BatchNorm (SyncBatchNorm
    included) in training mode or without running statistics, or any other layer in training mode that keeps
    running statistics (timm's EvoNorm-B, for instance). LayerNorm, GroupNorm and frozen BatchNorm do not."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and (m.training or m.running_mean is None):
            return True
        if m.training and any(name in ('running_mean', 'running_var') for name, _ in m.named_buffers(recurse=False)):
            return True
    return False


class FrozenBatchNorm(Callback):
    """During training, BatchNorm layers whose affine parameters are frozen (or that have none) stay in eval
    mode: they normalise with their running statistics, which stay as loaded (`bn='frozen'`). As fastai's
    `BnFreeze`, which leaves out SyncBatchNorm (distributed training) and BatchNorm without affine parameters."""
    order = 1  # after TrainEvalCallback puts the model in training mode, before DADATrainer looks at it

    def before_train(self):
        for m in self.learn.model.modules():
            if (isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
                    and not any(p.requires_grad for p in m.parameters())):
                m.eval()


@contextmanager
def tf32(allowed: bool):
    """Inside the block, float32 convolutions and matrix products may run as TF32 on CUDA (Ampere and later)
    or not; the process's settings come back after it. Settings made through torch's per-backend
    `fp32_precision` API are left as they are (reading the global flags is then refused)."""
    b = torch.backends
    try:
        saved = (b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32)
    except RuntimeError:
        yield
        return
    b.cudnn.allow_tf32 = b.cuda.matmul.allow_tf32 = allowed
    try:
        yield
    finally:
        b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32 = saved


@contextmanager
def cudnn_autotuner():
    """cuDNN's autotuner (`cudnn.benchmark`) on inside the block, unless deterministic algorithms were asked
    for; the process's setting comes back after it."""
    saved = torch.backends.cudnn.benchmark
    if not torch.are_deterministic_algorithms_enabled():
        torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = saved


class CudaBackend(Callback):
    """The CUDA backend settings while the Learner fits, restored afterwards (`after_fit`, which
    `DADALearner.fit` also calls when an error ends the fit):

    - TF32 (`tf32`): off in faithful mode, which keeps float32 convolutions and matrix products IEEE float32 as
      the reference computed (PyTorch otherwise runs float32 convolutions as TF32, with a 10-bit mantissa);
      on in fast mode.
    - cuDNN's autotuner (`benchmark`), on as in the reference's training script (the input sizes are fixed),
      unless deterministic algorithms were asked for (`--deterministic`)."""
    order = -20

    def __init__(self, tf32: bool, benchmark: bool = True):
        self.tf32, self.benchmark, self.stack = tf32, benchmark, None

    def before_fit(self):
        self.stack = ExitStack()
        self.stack.enter_context(tf32(self.tf32))
        if self.benchmark:
            self.stack.enter_context(cudnn_autotuner())

    def after_fit(self):
        if self.stack is not None:
            self.stack.close()
            self.stack = None


class NonFiniteLoss(RuntimeError):
    """Training met a loss that is NaN or infinite."""


class NonFiniteGuard(Callback):
    """Check the iteration's loss terms before the optimizers step: on a NaN or infinite term,
    `action='stop'` raises `NonFiniteLoss` naming the iteration and the term, `'skip'` drops the iteration's
    update (segmenter and discriminators) and goes on. The check reads one flag from the device per
    iteration; with `every=N` (stop only, fast mode) it reads it every N iterations and names the last
    iteration's terms. It runs before the mixed-precision step (which would otherwise skip an overflowing
    fp16 step on its own, silently)."""
    order = 9  # before MixedPrecision's before_step (10); all backward passes are done by then

    def __init__(self, action: str = 'stop', every: int = 1):
        if action not in ('stop', 'skip'):
            raise ValueError(f"unknown non-finite action {action!r}; valid: stop, skip")
        if action == 'skip' and every != 1:
            raise ValueError('skipping non-finite iterations needs a check at every iteration (every=1)')
        self.action, self.every, self.skipped, self.ok, self.since = action, every, [], None, None

    def before_fit(self):
        self.ok, self.since = None, None
        self.active = not finding_lr(self.learn)  # lr_find explores divergence

    def before_step(self):
        if not self.active:
            return
        terms = dict(getattr(getattr(self.learn, 'dada', None), 'batch_terms', {}) or {})
        terms.setdefault('loss', self.learn.loss.detach())
        names = list(terms)
        finite = torch.isfinite(torch.stack([terms[n].float().reshape(()) for n in names]))
        if self.ok is None:
            self.ok, self.since = finite.all(), self.learn.train_iter + 1
        else:
            self.ok = self.ok & finite.all()
        if (self.learn.train_iter + 1) % self.every == 0:
            bad = ', '.join(f'{n}={float(terms[n]):g}' for n, f in zip(names, finite.tolist()) if not f)
            self._check(bad or 'in another process or at an earlier iteration', self.learn.train_iter + 1)

    def flush(self) -> None:
        """Check now the iterations not checked yet (at each epoch's end, when the budget ends a fit, before a
        checkpoint is written); every process must call it at the same point."""
        if self.ok is not None:
            self._check('at one of them', self.learn.train_iter)

    def after_train(self):
        self.flush()

    def after_cancel_fit(self):  # an iteration budget ending mid-epoch: after_train does not run
        self.flush()

    def _check(self, bad: str, it: int) -> None:
        ok, self.ok = self.ok, None
        if _everywhere(ok):
            return
        if self.action == 'stop':
            when = f'iteration {it}' if self.since in (None, it) else f'iterations {self.since}-{it}'
            raise NonFiniteLoss(f'non-finite loss at {when}: {bad}; lower the learning rate, check the data, or '
                                'pass --on-nan skip to skip such iterations')
        self.skipped.append(it)
        warnings.warn(f'skipping iteration {it}: non-finite loss ({bad})')
        dada = getattr(self.learn, 'dada', None)
        if dada is not None and dada.d_opt is not None:
            dada.d_opt.zero_grad()
        raise CancelStepException()


def _everywhere(ok: torch.Tensor) -> bool:
    """Whether `ok` holds in every process (one all-reduce when distributed), so that all stop or skip together."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        flag = ok.float().reshape(1)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())
    return bool(ok)


class DeviceMixedPrecision(MixedPrecision):
    """fastai's `MixedPrecision` on the learner's device (fastai's own autocasts CUDA only): bf16 or fp16
    autocast; for fp16 a `GradScaler` that `DADATrainer` also uses for the discriminators' losses and step
    (one scaler, two optimizers: each step is skipped when its own gradients overflowed, and the scale
    follows both). fp16 runs on CPU too, slowly: it is meant for GPUs without bf16."""

    @property
    def name(self) -> str:
        return 'mixed_precision'

    def before_fit(self):
        with warnings.catch_warnings():  # fastai's own set-up warns that CUDA autocast is off: this one replaces it
            warnings.filterwarnings('ignore', message='CUDA is not available')
            super().before_fit()
        device = self.dls.device.type if getattr(self.dls, 'device', None) is not None else 'cpu'
        dtype = torch.bfloat16 if self.amp_mode == AMPMode.BF16 else torch.float16
        self.autocast = torch.autocast(device, dtype=dtype)
        self.learn.scaler = torch.amp.GradScaler(device, enabled=dtype == torch.float16)

    def after_pred(self):  # (seg, None) without the depth block: fastai's `to_float` fails on None
        self.learn.pred = tuple(p.float() if p is not None and torch.is_floating_point(p) else p for p in self.pred)

    def before_batch(self):
        self.learn.scaler_stepped = False  # set when an optimizer steps through the scaler this iteration
        super().before_batch()

    def before_step(self):
        self.learn.scaler_stepped = True
        super().before_step()

    def after_step(self):
        if getattr(self.learn, 'scaler_stepped', False):  # an iteration skipped before any step leaves the scale
            super().after_step()


class ThrottledProgress(ProgressCallback):
    """fastai's progress bar, reading the running loss from the device every `every` iterations only (each
    read waits for the GPU)."""

    def __init__(self, every: int = 50):
        self.every = every

    @property
    def name(self) -> str:
        return 'progress'  # stands in for ProgressCallback (`learn.no_bar()` finds it)

    def after_batch(self):
        self.pbar.update(self.iter + 1)
        if hasattr(self, 'smooth_loss') and self.iter % self.every == 0:
            self.pbar.comment = f'{self.smooth_loss.item():.4f}'
