"""The CUDA backend settings a Learner trains and validates with (TF32, cuDNN's autotuner): contexts that give
the process its own settings back after the block, also when an error ends it."""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch

__all__ = ['tf32', 'cudnn_autotuner', 'CudaBackend']


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


@dataclass(frozen=True)
class CudaBackend:
    """The CUDA backend settings of a Learner; `with settings.applied():` sets them for a block (`DADALearner` wraps
    `fit` and validation in it) and restores the process's own after it, also when an error ends it.

    - `tf32`: off in faithful mode, which keeps float32 convolutions and matrix products IEEE float32 as the
      reference computed (PyTorch otherwise runs float32 convolutions as TF32, with a 10-bit mantissa); on in fast
      mode.
    - `benchmark`: cuDNN's autotuner, on as in the reference's training script (the input sizes are fixed), unless
      deterministic algorithms were asked for (`--deterministic`)."""
    tf32: bool = False  # float32 convolutions and matrix products may run as TF32
    benchmark: bool = True  # cuDNN's autotuner

    @contextmanager
    def applied(self):
        """These settings inside the block, the process's own after it."""
        with tf32(self.tf32), (cudnn_autotuner() if self.benchmark else nullcontext()):
            yield
