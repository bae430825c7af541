"""Learning rates and budgets: the reference's poly schedule, the head's 10x rate, training for a number of
iterations, the epoch that seeds the paired DataLoader, and the rates now (`learning_rates`)."""
from __future__ import annotations

from fastai.callback.core import Callback, CancelFitException, TrainEvalCallback
from fastai.callback.schedule import LRFinder, ParamScheduler

__all__ = ['poly_decay', 'HeadLR', 'IterBudget', 'SetEpoch', 'finding_lr', 'learning_rates']


def poly_decay(start: float, power: float = 0.9):
    """The reference's learning-rate schedule: start * (1 - pos) ** power (pos = fraction of training)."""
    def _inner(pos: float) -> float:
        return start * max(1. - pos, 0.) ** power
    return _inner


class HeadLR(Callback):
    """Keep the head's learning rate (parameter group 1) at `mult` times the backbone's (group 0), whatever
    schedule sets the latter: the reference trains the classifier and depth block at 10x."""
    order = ParamScheduler.order + 1  # after ParamScheduler has set the backbone's rate

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
    order = ParamScheduler.order - 1  # after TrainEvalCallback and Recorder, before ParamScheduler reads pct_train

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


def learning_rates(learn) -> dict[str, float]:
    """The learning rates now: the backbone's (`lr`), the head's (`lr_head`) and the discriminators' (`lr_d`), where
    there are such parameter groups."""
    out = {}
    opt = getattr(learn, 'opt', None)
    if opt is not None:
        hypers = opt.hypers
        out['lr'] = float(hypers[0]['lr'])
        if len(hypers) > 1:
            out['lr_head'] = float(hypers[1]['lr'])
    d_opt = getattr(getattr(learn, 'dada', None), 'd_opt', None)
    if d_opt is not None:
        out['lr_d'] = float(d_opt.hypers[0]['lr'])
    return out


def finding_lr(learn) -> bool:
    """Whether the fit that starts is fastai's `lr_find` sweep."""
    return any(isinstance(cb, LRFinder) for cb in learn.cbs)


class SetEpoch(Callback):
    """Tell the paired training DataLoader which epoch starts, so its shuffle and pairing are seeded by it."""
    order = TrainEvalCallback.order + 1  # once fastai has started the epoch, before its batches are drawn

    def before_train(self):
        dl = getattr(self.dl, 'dl', self.dl)  # inside fastai's DistributedDL when distributed
        if hasattr(dl, 'set_epoch'):
            dl.set_epoch(self.epoch)
