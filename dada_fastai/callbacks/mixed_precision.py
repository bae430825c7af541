"""Mixed precision on any device: fastai's `MixedPrecision`, with the scaler that the discriminators share."""
from __future__ import annotations

import warnings

import torch
from fastai.callback.fp16 import AMPMode, MixedPrecision

__all__ = ['DeviceMixedPrecision']


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
