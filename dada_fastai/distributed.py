"""The device a process runs on, and training on several GPUs (or CPU processes) with fastai's distributed support on
Hugging Face accelerate.

Launch any training command with accelerate, for example
`accelerate launch --num_processes 2 -m dada_fastai.cli train ...` (`--cpu` for CPU processes with gloo).
Each process trains on its share of every epoch (the paired order is seeded, so identical everywhere);
gradients of the segmenter are averaged by DistributedDataParallel, those of the discriminators by an
all-reduce before their step, so every process holds the same weights; only rank 0 writes files."""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.distributed as dist
from fastai.callback.progress import ProgressCallback
from fastai.distributed import DistributedDL, DistributedTrainer
from fastai.torch_core import num_distrib, rank_distrib

from .errors import RunError

__all__ = ['resolve_device', 'BackendAwareDistributedDL', 'DADADistributedTrainer', 'distributed_training', 'is_main_process',
           'broadcast_object', 'barrier', 'shutdown']


def resolve_device(device: str = 'auto') -> torch.device:
    """'auto' -> CUDA when available (this process's GPU under accelerate), else CPU; 'cuda' without a GPU
    is an error."""
    if device == 'auto':
        if num_distrib() > 1:
            from accelerate import PartialState
            return PartialState().device
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    if device.startswith('cuda') and not torch.cuda.is_available():
        raise RunError(f'--device {device} requested but CUDA is not available on this machine '
                       '(no NVIDIA driver or a CPU-only torch); use --device cpu')
    try:
        return torch.device(device)
    except RuntimeError:
        raise RunError(f'unknown device {device!r}; valid: auto, cpu, cuda, cuda:N') from None


def is_main_process() -> bool:
    """True on rank 0 (and when not distributed)."""
    return rank_distrib() == 0


def barrier() -> None:
    """Wait for every process (no-op when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    """End this process's part of a distributed run: wait for the others, then leave the process group (a
    process that exits with gloo's threads still running can abort, failing a run that succeeded). A no-op
    when not distributed; call it once, at the end of the program."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def broadcast_object(obj, src: int = 0):
    """`obj` of rank `src` on every process (itself when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src)
    return box[0]


class BackendAwareDistributedDL(DistributedDL):
    """fastai's `DistributedDL` with a broadcast of the shuffled indices that works on every backend: fastai's
    own moves them to CUDA (NCCL only), which fails on CPU processes (gloo)."""

    def _broadcast(self, t, rank):
        device = 'cuda' if dist.get_backend() == 'nccl' else 'cpu'
        t = torch.as_tensor(t, dtype=torch.long, device=device)
        dist.broadcast(t, rank)
        return t.cpu().tolist()


class DADADistributedTrainer(DistributedTrainer):
    """fastai's `DistributedTrainer` for DADA: backend-aware data splitting, the discriminators' gradients
    averaged across processes right after the backward passes (so a step cancelled by fp16's scaler or the
    non-finite check leaves every process in step), BatchNorm left per process (as the reference normalises
    each image on its own) unless `sync_bn=True`."""

    def _wrap_dl(self, dl):
        return dl if isinstance(dl, DistributedDL) else BackendAwareDistributedDL(dl, device=self.learn.model.device)

    def after_fit(self):
        # BatchNorm running statistics follow each process's last batches; end with rank 0's everywhere
        if dist.is_initialized():
            for buf in self.learn.model.buffers():
                dist.broadcast(buf, 0)
        super().after_fit()

    def after_backward(self):  # after DADATrainer's (order 5), before any step can be cancelled
        dada = getattr(self.learn, 'dada', None)
        if dada is None or not dada.discriminators or not dist.is_initialized():
            return
        world = dist.get_world_size()
        for p in dada.discriminators.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad.div_(world)


@contextmanager
def distributed_training(learn, sync_bn: bool = False):
    """Train `learn` across the processes of an accelerate launch (a no-op in a single process)."""
    if num_distrib() <= 1:
        yield learn
        return
    from accelerate.utils import DistributedDataParallelKwargs
    # the fooling loss leaves some parameters out of a backward pass (e.g. the classifier under depth-only
    # adaptation), which DistributedDataParallel must be told about
    trainer = DADADistributedTrainer(sync_bn, kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    learn.add_cb(trainer)
    if rank_distrib():
        learn.remove_cb(ProgressCallback)
        if hasattr(learn, 'progress'):
            learn.remove_cb(learn.progress)
    try:
        yield learn
    finally:
        learn.remove_cb(trainer)
