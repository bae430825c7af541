"""Mixed precision on any device: fastai's `MixedPrecision`, with the scaler that the discriminators share; and the
precision fast mode takes when none is asked for (bf16 where the hardware computes it natively)."""
from __future__ import annotations

import warnings

import torch
from fastai.callback.fp16 import AMPMode, MixedPrecision

__all__ = ['DeviceMixedPrecision', 'cpu_has_native_bf16', 'default_precision']


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


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (x86 AVX512-BF16 or AMX-BF16, Arm BF16), as torch reports it."""
    caps = {}
    try:
        caps = torch.cpu.get_capabilities()
    except (AttributeError, RuntimeError):  # older torch: the private probes it had
        for name, probe in (('avx512_bf16', '_is_avx512_bf16_supported'), ('amx_bf16', '_is_amx_tile_supported')):
            fn = getattr(torch.cpu, probe, None)
            caps[name] = bool(fn()) if fn is not None else False
    return any(bool(caps.get(k)) for k in ('avx512_bf16', 'amx_bf16', 'bf16', 'sve_bf16', 'neon_bf16'))


def default_precision(device=None) -> str:
    """Fast mode's precision when none is asked for: bf16 on GPU and on CPUs with native bf16, else fp32."""
    dev = torch.device(device) if device is not None else torch.device('cpu')
    if dev.type == 'cuda':
        return 'bf16'
    return 'bf16' if dev.type == 'cpu' and cpu_has_native_bf16() else 'fp32'
