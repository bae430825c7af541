"""What a NaN or infinite loss does: stop the run, or skip the iteration, in every process alike."""
from __future__ import annotations

import warnings

import torch
from fastai.callback.core import Callback, CancelStepException
from fastai.callback.fp16 import MixedPrecision

from ..errors import UserError
from .schedule import finding_lr

__all__ = ['NonFiniteLoss', 'NonFiniteGuard']


class NonFiniteLoss(UserError, RuntimeError):
    """Training met a loss that is NaN or infinite."""


class NonFiniteGuard(Callback):
    """Check the iteration's loss terms before the optimizers step: on a NaN or infinite term,
    `action='stop'` raises `NonFiniteLoss` naming the iteration and the term, `'skip'` drops the iteration's
    update (segmenter and discriminators) and goes on. The check reads one flag from the device per
    iteration; with `every=N` (stop only, fast mode) it reads it every N iterations and names the last
    iteration's terms. It runs before the mixed-precision step (which would otherwise skip an overflowing
    fp16 step on its own, silently)."""
    order = MixedPrecision.order - 1  # before its before_step; all backward passes are done by then

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
