"""The mean teacher of self-training: an exponential moving average of the student, updated after every optimizer
step, that gives the pseudo-labels."""
from __future__ import annotations

import copy
from contextlib import contextmanager

import torch
from fastai.callback.core import Callback
from torch import nn

from ..mixing import ema_alpha, ema_update
from .adversarial import DADATrainer
from .schedule import finding_lr

__all__ = ['MeanTeacher']


def _student(learn) -> nn.Module:
    return getattr(learn.model, 'module', learn.model)  # unwrapped from DistributedDataParallel


class MeanTeacher(Callback):
    """The mean teacher (`learn.teacher`, its network `learn.teacher.model`): a copy of the student made when training
    starts (after the warm start or `--init` weights are in), then after each optimizer step `t` (counted from 0 over
    the whole run, resumes included) teacher = a teacher + (1 - a) student with a = min(1 - 1 / (t + 1), `alpha`), for
    parameters and BatchNorm statistics alike (`mixing.ema_update`). It never receives gradients; dropout and
    drop-path are off in it.

    It normalises a target batch as the student trains (`predict`): with the batch's own statistics under the
    reference's BatchNorm (`bn='batch'`, the running statistics left as they are), with its running statistics under
    `bn='frozen'`. Under several processes every process computes the same update from the same student, and rank
    0's BatchNorm statistics are given to all, so that every process holds the same teacher. `lr_find` leaves it as it
    found it."""
    order = DADATrainer.order + 2  # after the optimizers have stepped

    def __init__(self, alpha: float = 0.99, bn: str = 'batch'):
        if bn not in ('batch', 'frozen'):
            raise ValueError(f"unknown bn {bn!r}; valid: batch, frozen")
        self.alpha, self.bn, self.model, self.step = alpha, bn, None, 0

    @property
    def name(self) -> str:
        return 'teacher'

    def _make(self) -> None:
        self._set_model(copy.deepcopy(_student(self.learn)).requires_grad_(False).eval())

    def _set_model(self, model: nn.Module | None) -> None:
        # its own network, not the Learner's: set past fastai's warning about shadowing `learn.model`
        self.__dict__['model'] = model

    # fastai's `validate` fires before_fit and after_fit too: the teacher is made at the first training epoch
    def before_fit(self):
        self.before_lr_find = copy.deepcopy(self.state_dict()) if finding_lr(self.learn) else None

    def before_train(self):
        if self.model is None:
            self._make()
        self.model.to(next(_student(self.learn).parameters()).device)

    def after_step(self):
        if not self.training or self.model is None:
            return
        ema_update(self.model, _student(self.learn), ema_alpha(self.step, self.alpha))
        self.step += 1
        _same_everywhere(self.model)

    def after_fit(self):
        if getattr(self, 'before_lr_find', None) is not None:
            self.load_state_dict(self.before_lr_find)
            self.before_lr_find = None

    @contextmanager
    def normalising(self):
        """The teacher's modes while it labels a target batch: eval mode (no dropout or drop-path), its BatchNorm on
        the batch's statistics under `bn='batch'` (momentum 0: the running statistics stay as they are, and so does
        the batch counter: labelling changes nothing in the teacher)."""
        bns = [m for m in self.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        saved = [(m.momentum, m.training, None if m.num_batches_tracked is None else m.num_batches_tracked.clone())
                 for m in bns]
        self.model.eval()
        if self.bn == 'batch':
            for m in bns:
                m.train()
                m.momentum = 0.
        try:
            yield self.model
        finally:
            for m, (momentum, training, tracked) in zip(bns, saved):
                m.momentum, m.training = momentum, training
                if tracked is not None:
                    m.num_batches_tracked.copy_(tracked)  # the counter a batch-statistics forward moved

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The teacher's (logits, inverse depth) for a target batch, normalised as the student trains."""
        with self.normalising() as model:
            return model(x)

    # -- state for checkpoints ----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The teacher's weights and its step (None before training made it)."""
        return {'model': self.model.state_dict() if self.model is not None else None, 'step': self.step}

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` saved."""
        self.step = int(state['step'])
        if state['model'] is None:
            self._set_model(None)
            return
        if self.model is None:
            self._make()
        self.model.load_state_dict(state['model'])


def _same_everywhere(model: nn.Module) -> None:
    """Under several processes, give every process rank 0's buffers (BatchNorm statistics follow each process's
    batches; the parameters follow the student, which DistributedDataParallel keeps equal)."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        for buf in model.buffers():
            dist.broadcast(buf, 0)
