"""The loss terms of the training iterations as columns of fastai's progress table."""
from __future__ import annotations

import torch
from fastai.learner import Metric

__all__ = ['TrainTerm']


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
