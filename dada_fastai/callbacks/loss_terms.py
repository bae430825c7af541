"""The loss terms of the training iterations: as columns of fastai's progress table (`TrainTerm`), averaged over the
iterations between two rows of a log (`TermMeter`), and the values a validation reports."""
from __future__ import annotations

import torch
from fastai.learner import Metric

__all__ = ['TrainTerm', 'TermMeter', 'batch_terms', 'validation_values']


class TrainTerm(Metric):
    """One loss term of the training iterations as a column of the progress table, as fastai's `LossMetric` reports
    one of the loss function's: the mean of `learn.dada.batch_terms[name]` over an epoch's training batches, shown
    with the validation that follows them. A validation without training before it (`learn.validate()`,
    `evaluate`) reports None: validation batches have no such term."""

    def __init__(self, name: str):
        self._name = name
        self.clear()

    def clear(self):
        """Forget the values (`DADATrainer.before_train`, at each training epoch)."""
        self.total, self.count, self.trained = 0., 0, False

    def reset(self):
        # fastai's Recorder resets the metrics before each validation: an epoch's training mean stays for the
        # validation that ends the epoch, and only for it
        if not self.trained:
            self.clear()
        self.trained = False

    def add(self, value: torch.Tensor) -> None:
        """One training iteration's value (kept on the device; read once per epoch)."""
        self.total, self.count, self.trained = self.total + value.detach(), self.count + 1, True

    def accumulate(self, learn):
        pass  # called on validation batches, which have no such term; `DADATrainer` adds the training ones

    @property
    def value(self):
        if not self.count:
            return None
        return float(self.total) / self.count

    @property
    def name(self):
        return self._name


class TermMeter:
    """Loss terms averaged over the iterations since the last read, accumulated on the device (no
    synchronisation per iteration); non-finite values (an iteration skipped with `--on-nan skip`) are left
    out of the mean, and a term that had none finite reads NaN."""

    def __init__(self):
        self.sums, self.counts, self.n = {}, {}, 0

    def add(self, terms: dict[str, torch.Tensor]) -> None:
        for k, v in terms.items():
            v = v.detach().float().reshape(())
            ok = torch.isfinite(v)
            self.sums[k] = self.sums.get(k, 0.) + torch.where(ok, v, torch.zeros_like(v))
            self.counts[k] = self.counts.get(k, 0.) + ok.float()
        self.n += 1

    def pop(self) -> dict[str, float]:
        """The means since the last call (one transfer from the device), and a fresh start."""
        names = list(self.sums)
        out = {}
        if names:
            both = torch.stack([torch.stack([self.sums[k], self.counts[k]]) for k in names]).cpu().tolist()
            out = {k: (s / c if c else float('nan')) for k, (s, c) in zip(names, both)}
        self.sums, self.counts, self.n = {}, {}, 0
        return out


def batch_terms(learn) -> dict[str, torch.Tensor]:
    """This iteration's loss terms (seg, depth, adv, d_src, d_trg, ...) and fastai's source loss (`train_loss`)."""
    terms = dict(getattr(getattr(learn, 'dada', None), 'batch_terms', {}) or {})
    loss = getattr(learn, 'loss', None)
    if isinstance(loss, torch.Tensor):
        terms['train_loss'] = loss
    return terms


def _maybe_float(v):
    if v is None:
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def validation_values(learn) -> dict[str, float | None] | None:
    """The last validation's loss and metrics (mIoU, mIoU*, ...), the training terms left out; None when it was
    cancelled."""
    rec = getattr(learn, 'recorder', None)
    if rec is None or getattr(rec, 'cancel_valid', False):
        return None
    out = {'valid_loss': _maybe_float(rec.loss.value) if rec.loss.count else None}
    for m in learn.metrics:
        if not isinstance(m, TrainTerm):
            out[m.name] = _maybe_float(m.value)
    return out
