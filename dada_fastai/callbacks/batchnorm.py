"""BatchNorm during training: whether a model normalises with batch statistics, and frozen BatchNorm layers."""
from __future__ import annotations

from fastai.callback.core import Callback, TrainEvalCallback
from torch import nn

__all__ = ['uses_batch_statistics', 'FrozenBatchNorm']


def uses_batch_statistics(model: nn.Module) -> bool:
    """Whether some normalisation layer of `model` normalises with the statistics of the batch in its current
    mode, so that what one image gets depends on the other images of the batch: a BatchNorm (SyncBatchNorm
    included) in training mode or without running statistics, or any other layer in training mode that keeps
    running statistics (timm's EvoNorm-B, for instance). LayerNorm, GroupNorm and frozen BatchNorm do not."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and (m.training or m.running_mean is None):
            return True
        if m.training and any(name in ('running_mean', 'running_var') for name, _ in m.named_buffers(recurse=False)):
            return True
    return False


class FrozenBatchNorm(Callback):
    """During training, BatchNorm layers whose affine parameters are frozen (or that have none) stay in eval
    mode: they normalise with their running statistics, which stay as loaded (`bn='frozen'`). As fastai's
    `BnFreeze`, which leaves out SyncBatchNorm (distributed training) and BatchNorm without affine parameters."""
    order = TrainEvalCallback.order + 1  # after it puts the model in training mode (DADATrainer, later, reads the modes)

    def before_train(self):
        for m in self.learn.model.modules():
            if (isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
                    and not any(p.requires_grad for p in m.parameters())):
                m.eval()
