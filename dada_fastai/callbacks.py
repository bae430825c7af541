"""Callbacks that make a fastai Learner train DADA: the adversarial step, the head's 10x learning rate,
iteration budgets and the reference's poly schedule."""
from __future__ import annotations

import warnings

import torch
from fastai.callback.core import Callback, CancelFitException, CancelStepException
from fastai.learner import Metric
from fastai.optimizer import OptimWrapper
from torch import nn

from .losses import (Lambdas, adaptation_map, discriminator_loss, fooling_loss, set_requires_grad, upsample,
                     SOURCE_LABEL, TARGET_LABEL)

__all__ = ['TrainTerm', 'DADATrainer', 'HeadLR', 'IterBudget', 'SetEpoch', 'poly_decay', 'NonFiniteLoss',
           'NonFiniteGuard']


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
        hypers = self.learn.opt.hypers
        if len(hypers) > 1 and self.mult != 1:
            hypers[1]['lr'] = hypers[0]['lr'] * self.mult
            self.learn.opt.set_hypers(lr=[h['lr'] for h in hypers])

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
            self.learn.pct_train = min(self.train_iter / self.n_iters, 1.)

    def after_batch(self):
        if self.training and self.train_iter >= self.n_iters:
            raise CancelFitException()


class SetEpoch(Callback):
    """Tell the paired training DataLoader which epoch starts, so its shuffle and pairing are seeded by it."""
    order = -5

    def before_train(self):
        if hasattr(self.dl, 'set_epoch'):
            self.dl.set_epoch(self.epoch)


class DADATrainer(Callback):
    """The adversarial half of a DADA iteration, around fastai's source step.

    fastai computes the source forward, the source loss and its backward; this callback then runs, in the
    reference's order, the target forward with the frozen discriminators and the fooling loss, and the
    discriminators' own losses on detached source and target maps; the discriminators step with their own
    optimizer (Adam) after the segmenter, at a learning rate that follows the segmenter's schedule.
    `discriminators` maps an adaptation map ('surprisal', 'depth', 'dada') to its discriminator; empty for
    source-only training (the target image is then ignored)."""
    order = 5

    @property
    def name(self) -> str:
        return 'dada'  # reachable as `learn.dada`

    def __init__(self, discriminators: dict[str, nn.Module] | nn.ModuleDict, lambdas: Lambdas = Lambdas(),
                 d_lr: float = 1e-4, d_betas: tuple[float, float] = (0.9, 0.99)):
        self.discriminators = discriminators if isinstance(discriminators, nn.ModuleDict) else nn.ModuleDict(discriminators)
        self.lambdas, self.d_lr, self.d_betas = lambdas, d_lr, d_betas
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

    def before_train(self):
        for t in self.terms.values():
            t.clear()
        self.discriminators.train()

    # -- one iteration ------------------------------------------------------------------------------------
    def before_batch(self):
        if not self.training:
            return
        self.x_trg = self.learn.xb[1]
        self.learn.xb = self.learn.xb[:1]
        self.batch_terms = {}
        for d in self.discriminators.values():
            set_requires_grad(d, False)

    def after_loss(self):
        if not self.training:
            return
        parts = getattr(self.loss_func, 'parts', {})
        for name in ('seg', 'depth'):
            if name in parts:
                self._record(name, parts[name])

    def after_backward(self):
        if not self.training or not self.discriminators:
            return
        seg_s, depth_s = self.learn.pred
        size_s, size_t = self.learn.yb[0].shape[-2:], self.x_trg.shape[-2:]
        seg_t, depth_t = self.learn.model(self.x_trg)
        up_seg_t = upsample(seg_t, size_t)
        up_depth_t = upsample(depth_t, size_t) if depth_t is not None else None
        maps_t, adv = {}, 0.
        for kind, d in self.discriminators.items():
            maps_t[kind] = adaptation_map(up_seg_t, up_depth_t, kind)
            loss = fooling_loss(d, maps_t[kind])
            self._record('adv', loss, kind)
            adv = adv + loss
        (adv * self.lambdas.adv).backward()
        with torch.no_grad():
            up_seg_s = upsample(seg_s.detach(), size_s)
            up_depth_s = upsample(depth_s.detach(), size_s) if depth_s is not None else None
        for kind, d in self.discriminators.items():
            set_requires_grad(d, True)
            loss_src = discriminator_loss(d, adaptation_map(up_seg_s, up_depth_s, kind), SOURCE_LABEL)
            loss_src.backward()
            loss_trg = discriminator_loss(d, maps_t[kind], TARGET_LABEL)
            loss_trg.backward()
            self._record('d_src', loss_src, kind)
            self._record('d_trg', loss_trg, kind)

    def after_step(self):
        if self.d_opt is None or not self.training:
            return
        ratio = float(self.learn.opt.hypers[0]['lr']) / self.lr_ref
        self.d_opt.set_hyper('lr', self.d_lr * ratio)
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



class NonFiniteLoss(RuntimeError):
    """Training met a loss that is NaN or infinite."""


class NonFiniteGuard(Callback):
    """Check the iteration's loss terms before the optimizers step (one host sync per iteration): on a NaN
    or infinite term, `action='stop'` raises `NonFiniteLoss` naming the iteration and the term, `'skip'`
    drops the iteration's update (segmenter and discriminators) and goes on."""
    order = 80  # before_step runs after DADATrainer's backward passes

    def __init__(self, action: str = 'stop'):
        if action not in ('stop', 'skip'):
            raise ValueError(f"unknown non-finite action {action!r}; valid: stop, skip")
        self.action, self.skipped = action, []

    def before_step(self):
        terms = dict(getattr(getattr(self.learn, 'dada', None), 'batch_terms', {}) or {})
        terms.setdefault('loss', self.learn.loss.detach())
        names = list(terms)
        finite = torch.isfinite(torch.stack([terms[n].float().reshape(()) for n in names]))
        if bool(finite.all()):
            return
        bad = ', '.join(f'{n}={float(terms[n]):g}' for n, ok in zip(names, finite.tolist()) if not ok)
        it = self.learn.train_iter + 1
        if self.action == 'stop':
            raise NonFiniteLoss(f'non-finite loss at iteration {it}: {bad}; lower the learning rate, check the '
                                'data, or pass --on-nan skip to skip such iterations')
        self.skipped.append(it)
        warnings.warn(f'skipping iteration {it}: non-finite loss ({bad})')
        dada = getattr(self.learn, 'dada', None)
        if dada is not None and dada.d_opt is not None:
            dada.d_opt.zero_grad()
        raise CancelStepException()
