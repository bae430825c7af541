"""The adversarial half of a DADA iteration: target forward, fooling loss, discriminators' losses and step."""
from __future__ import annotations

import copy
from contextlib import nullcontext

import torch
from fastai.callback.core import Callback
from fastai.callback.fp16 import MixedPrecision
from fastai.optimizer import OptimWrapper
from torch import nn

from ..losses import (Lambdas, adaptation_map, discriminator_loss, fooling_loss, set_requires_grad, upsample,
                      SOURCE_LABEL, TARGET_LABEL)
from .batchnorm import uses_batch_statistics
from .loss_terms import TrainTerm
from .schedule import finding_lr

__all__ = ['DADATrainer']


class DADATrainer(Callback):
    """The adversarial half of a DADA iteration, around fastai's source step.

    fastai computes the source forward, the source loss and its backward; this callback then runs, in the
    reference's order, the target forward with the frozen discriminators and the fooling loss, and the
    discriminators' own losses on detached source and target maps; the discriminators step with their own
    optimizer (Adam) after the segmenter, at `d_lr` times the segmenter's schedule factor (`schedule_factor`).
    `discriminators` maps an adaptation map ('surprisal', 'depth', 'dada') to its discriminator; empty for
    source-only training (the target image is then ignored). `fused=True` (fast mode) computes the same
    gradients with two backward passes instead of four, holding the source and target graphs at once; with
    `joint=True` it also runs source and target through the segmenter in one forward (one batch of both)
    whenever that computes the same thing (up to the random draws of dropout or stochastic depth, where a
    backbone has them): no normalisation layer uses batch statistics (BatchNorm frozen, or none at all) and
    both domains come at the same size. `joined` tells whether the last batch was."""
    order = MixedPrecision.order - 5  # its after_step steps the discriminators through the scaler before
    # MixedPrecision updates it; after FrozenBatchNorm has set the modules' modes

    @property
    def name(self) -> str:
        return 'dada'  # reachable as `learn.dada`

    def __init__(self, discriminators: dict[str, nn.Module] | nn.ModuleDict, lambdas: Lambdas = Lambdas(),
                 d_lr: float = 1e-4, d_betas: tuple[float, float] = (0.9, 0.99), fused: bool = False,
                 joint: bool = True, extra_terms: tuple[str, ...] = ()):
        self.discriminators = discriminators if isinstance(discriminators, nn.ModuleDict) else nn.ModuleDict(discriminators)
        self.lambdas, self.d_lr, self.d_betas = lambdas, d_lr, d_betas
        self.fused = fused  # fast mode: 2 backward passes (source + fooling, then all D losses) instead of 4
        self.joint = joint  # fast mode: one forward for source and target where that changes nothing
        self.can_join, self.joined, self.n_src = False, False, None
        # this iteration's target predictions and the maps the discriminators saw, until its end
        self.pred_t, self.maps_s, self.maps_t = None, {}, {}
        self.x_src = self.x_trg = None  # this iteration's source and target images
        self.d_opt = None
        self.extra_terms = tuple(extra_terms)  # loss terms other callbacks record (`record`), e.g. self-training's
        self.terms = {k: TrainTerm(k) for k in self.term_names()}
        self.batch_terms: dict[str, torch.Tensor] = {}  # this iteration's loss terms

    def term_names(self) -> list[str]:
        """Names of the loss terms this configuration records."""
        names = ['seg', 'depth']
        for kind in self.discriminators:
            sfx = '' if len(self.discriminators) == 1 else f'_{kind}'
            names += [f'adv{sfx}', f'd_src{sfx}', f'd_trg{sfx}']
        return names + list(self.extra_terms)

    def record(self, name: str, value: torch.Tensor, kind: str | None = None) -> None:
        """Record this iteration's value of the loss term `name` (of discriminator `kind`): in `batch_terms` (the
        history, the progress lines, the non-finite check) and in its progress-table column."""
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
        # every fit starts at its schedule's peak rate (`fit(n, lr)`, poly, `DADALearner.fit_one_cycle`/`fit_flat_cos`)
        self.peak_lr = self.learn.opt.hypers[0]['lr'] if self.learn.opt is not None else None
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
        self.x_src = x_src
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
        if self.pred_t is None:  # not computed by a joint forward
            with self._autocast():
                self.pred_t = self.learn.model(self.x_trg)
        seg_t, depth_t = self.pred_t
        up_seg_t = upsample(seg_t.float(), size_t)
        up_depth_t = upsample(depth_t.float(), size_t) if depth_t is not None else None
        self.maps_t, adv = {}, 0.
        for kind, d in self.discriminators.items():
            self.maps_t[kind] = adaptation_map(up_seg_t, up_depth_t, kind)
            with self._autocast():
                loss = fooling_loss(d, self.maps_t[kind]).float()
            self.record('adv', loss, kind)
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
        total, self.maps_s = 0., {}
        for kind, d in self.discriminators.items():
            set_requires_grad(d, True)
            with self._autocast():
                self.maps_s[kind] = adaptation_map(up_seg_s, up_depth_s, kind)
                loss_src = discriminator_loss(d, self.maps_s[kind], SOURCE_LABEL).float()
                loss_trg = discriminator_loss(d, self.maps_t[kind], TARGET_LABEL).float()
            self.record('d_src', loss_src, kind)
            self.record('d_trg', loss_trg, kind)
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
                self.record(name, parts[name])
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
        self.d_opt.set_hyper('lr', self.d_lr * self.schedule_factor())
        scaler = getattr(self.learn, 'scaler', None)
        if scaler is not None and scaler.is_enabled():  # skips the step when the scaled gradients overflowed
            scaler.step(self.d_opt.opt)
            self.learn.scaler_stepped = True
        else:
            self.d_opt.step()
        self.d_opt.zero_grad()

    def schedule_factor(self) -> float:
        """The segmenter's schedule factor: its backbone's rate now over the fit's peak rate. The discriminators
        train at `d_lr` times it, whatever the schedule (poly, one cycle, flat then cosine, constant)."""
        if not self.peak_lr:
            return 1.
        return float(self.learn.opt.hypers[0]['lr']) / float(self.peak_lr)

    def after_batch(self):
        self.pred_t, self.maps_s, self.maps_t = None, {}, {}
        self.x_src = self.x_trg = None

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
