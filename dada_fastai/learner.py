"""`dada_learner()`: the DADA model, its discriminators and callbacks in a fastai Learner; the methods and
ablations of the paper as configurations; the evaluation metrics; `show_results`."""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from fastai.callback.progress import ProgressCallback
from fastai.callback.schedule import ParamScheduler
from fastai.data.core import DataLoaders
from fastai.learner import Learner, Metric
from fastai.optimizer import OptimWrapper
from torch import nn

from .callbacks import (CudaBackend, DADATrainer, DeviceMixedPrecision, FrozenBatchNorm, HeadLR, IterBudget,
                        NonFiniteGuard, SetEpoch, ThrottledProgress, poly_decay)
from .losses import ADAPT_MAPS, IGNORE_INDEX, Lambdas, source_loss, upsample
from .model import DADA, Discriminator, param_groups
from .protocols import Protocol, get_protocol

__all__ = ['MethodConfig', 'METHODS', 'method_config', 'DADALoss', 'ConfusionMatrix', 'MeanIoU', 'finite_mean',
           'confusion_matrix', 'iou_from_confusion', 'DADALearner', 'dada_learner', 'sgd_reference']


# ---------------------------------------------------------------------------------------------------------
# Methods and ablations (Table 3 of the paper)
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MethodConfig:
    """Which parts of DADA are on: the depth block, feature fusion, and the maps the discriminators see."""
    depth_block: bool = True
    feature_fusion: bool = True
    adapt: tuple[str, ...] = ('dada',)  # one discriminator per map: 'surprisal', 'depth', 'dada'

    def __post_init__(self):
        bad = [a for a in self.adapt if a not in ADAPT_MAPS]
        if bad:
            raise ValueError(f'unknown adaptation map {bad[0]!r}; valid: {", ".join(ADAPT_MAPS)}')
        if not self.depth_block and (self.feature_fusion or set(self.adapt) & {'depth', 'dada'}):
            raise ValueError('feature fusion and depth/DADA adaptation need the depth block')


METHODS: dict[str, MethodConfig] = {
    'source_only': MethodConfig(False, False, ()),  # S1: DeepLab-v2 trained on the source
    'advent': MethodConfig(False, False, ('surprisal',)),  # S2: AdvEnt
    's3': MethodConfig(True, True, ('surprisal',)),  # surprisal adaptation + feature fusion
    's4': MethodConfig(True, False, ('depth',)),  # depth adaptation
    's5': MethodConfig(True, True, ('depth',)),  # depth adaptation + feature fusion
    's6': MethodConfig(True, True, ('surprisal', 'depth')),  # two discriminators
    'dada': MethodConfig(True, True, ('dada',)),  # S7: DADA
}
METHODS |= {'s1': METHODS['source_only'], 's2': METHODS['advent'], 's7': METHODS['dada']}
METHODS['depth_source_only'] = MethodConfig(True, True, ())  # DADA's network trained on the source alone


def method_config(method: str | MethodConfig) -> MethodConfig:
    """A method name (source_only, advent, dada, s1..s7, depth_source_only) -> its configuration."""
    if isinstance(method, MethodConfig):
        return method
    try:
        return METHODS[method.lower()]
    except KeyError:
        raise ValueError(f'unknown method {method!r}; valid: {", ".join(METHODS)}') from None


# ---------------------------------------------------------------------------------------------------------
# Loss and metrics
# ---------------------------------------------------------------------------------------------------------
class DADALoss:
    """Source loss for fastai: predictions (seg, depth) upsampled to the label size, then
    lambda_seg CE + lambda_depth berHu; on validation batches (no depth) the CE alone."""

    def __init__(self, lambdas: Lambdas = Lambdas()):
        self.lambdas, self.parts = lambdas, {}

    def __call__(self, pred, mask, depth=None):
        seg, dep = pred
        size = mask.shape[-2:]
        up_dep = upsample(dep, size) if dep is not None and depth is not None else None
        total, self.parts = source_loss(upsample(seg, size), up_dep, mask, depth, self.lambdas)
        return total

    def activation(self, pred):
        return F.softmax(pred[0], dim=1), pred[1]

    def decodes(self, pred):
        return pred[0].argmax(1), pred[1]


def confusion_matrix(pred: torch.Tensor, label: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Confusion matrix (rows: ground truth, cols: prediction) over pixels whose label is valid."""
    valid = label != IGNORE_INDEX
    idx = label[valid].long() * n_classes + pred[valid].long()
    return torch.bincount(idx, minlength=n_classes ** 2).reshape(n_classes, n_classes)


def iou_from_confusion(cm: np.ndarray | torch.Tensor) -> np.ndarray:
    """Per-class IoU = TP / (TP + FP + FN) in percent; NaN for classes absent from both."""
    cm = np.asarray(cm, np.float64)
    tp = np.diag(cm)
    denom = cm.sum(0) + cm.sum(1) - tp
    with np.errstate(invalid='ignore', divide='ignore'):
        return np.where(denom > 0, tp / denom * 100, np.nan)


def finite_mean(values) -> float | None:
    """Mean of the finite values; None when there are none (a class absent from labels and predictions has no
    IoU, and JSON has no NaN)."""
    values = np.atleast_1d(np.asarray(values, np.float64))
    return float(np.nanmean(values)) if np.isfinite(values).any() else None


class ConfusionMatrix:
    """The confusion matrix of a validation pass at the label's full resolution (logits upsampled
    bilinearly, align_corners=True, before the argmax, as the reference evaluates)."""

    def __init__(self, protocol: Protocol):
        self.protocol = protocol
        self.reset()

    def reset(self):
        self.cm = torch.zeros(self.protocol.n_classes, self.protocol.n_classes, dtype=torch.long)

    def accumulate(self, seg: torch.Tensor, label: torch.Tensor):
        pred = upsample(seg, label.shape[-2:]).argmax(1)
        self.cm += confusion_matrix(pred, label, self.protocol.n_classes).cpu()

    def per_class(self) -> dict[str, float | None]:
        """{class name: IoU %} of the accumulated matrix (None for a class absent from labels and predictions)."""
        return {c: finite_mean(v) for c, v in zip(self.protocol.classes, iou_from_confusion(self.cm))}


class MeanIoU(Metric):
    """mIoU (%) on the validation set, over all classes or a subset (mIoU* of the 16-class protocol).
    The metric without a subset fills the shared `ConfusionMatrix`; put it first."""

    def __init__(self, cm: ConfusionMatrix, subset: Sequence[int] | None = None, name: str = 'miou'):
        self.cm, self.subset, self._name = cm, subset, name

    def reset(self):
        if self.subset is None:
            self.cm.reset()

    def accumulate(self, learn):
        if self.subset is None:
            self.cm.accumulate(learn.pred[0], learn.yb[0])

    @property
    def value(self):
        if not self.cm.cm.sum():
            return None
        iou = iou_from_confusion(self.cm.cm)
        return finite_mean(iou if self.subset is None else iou[list(self.subset)])

    @property
    def name(self):
        return self._name


# ---------------------------------------------------------------------------------------------------------
# The Learner
# ---------------------------------------------------------------------------------------------------------
def sgd_reference(params, lr: float = 2.5e-4, momentum: float = 0.9, wd: float = 5e-4, **kwargs) -> OptimWrapper:
    """The reference's optimizer: PyTorch SGD with momentum 0.9 and (coupled) weight decay 5e-4."""
    return OptimWrapper(params, torch.optim.SGD, lr=lr, momentum=momentum, weight_decay=wd)


class DADALearner(Learner):
    """A fastai Learner for DADA: `learn.dada` is the adversarial callback (discriminators, their
    optimizer, the loss terms); `fit_iters` trains for a number of iterations; `show_results` shows target
    image, ground truth, prediction and predicted depth."""

    def _split(self, b):
        # training batches have two inputs (source and target images), validation batches one
        i = getattr(self.dl, 'n_inp', 1 if len(b) == 1 else len(b) - 1)
        self.xb, self.yb = b[:i], b[i:]

    def fit(self, *args, **kwargs):
        try:
            return super().fit(*args, **kwargs)
        finally:  # fastai skips after_fit when an error ends the fit: the process's CUDA settings come back
            for cb in self.cbs:
                if isinstance(cb, CudaBackend):
                    cb.after_fit()

    @property
    def protocol(self) -> Protocol:
        return self.dada_config['protocol']

    @property
    def confusion(self) -> ConfusionMatrix:
        return self.dada_config['confusion']

    def fit_iters(self, n_iters: int, lr: float | None = None, schedule: str = 'poly', power: float = 0.9,
                  cbs=None, **kwargs) -> None:
        """Train for exactly `n_iters` iterations with `schedule`: 'poly' (the reference: lr (1 - t)^0.9),
        'one_cycle', 'flat_cos' or 'constant'."""
        from fastai.torch_core import num_distrib
        n_per_epoch = -(-len(self.dls.train) // max(num_distrib(), 1))  # each process's share when distributed
        if n_per_epoch == 0:
            raise ValueError('the training DataLoader is empty: check the source dataset and the batch size')
        n_epoch = -(-n_iters // n_per_epoch)
        cbs = [IterBudget(n_iters)] + list(cbs or [])
        lr = self.lr if lr is None else lr
        if schedule == 'poly':
            if self.opt is None:
                self.create_opt()
            self.fit(n_epoch, lr, cbs=cbs + [ParamScheduler({'lr': poly_decay(lr, power)})], **kwargs)
        elif schedule == 'one_cycle':
            self.fit_one_cycle(n_epoch, lr, cbs=cbs, **kwargs)
        elif schedule == 'flat_cos':
            self.fit_flat_cos(n_epoch, lr, cbs=cbs, **kwargs)
        elif schedule == 'constant':
            self.fit(n_epoch, lr, cbs=cbs, **kwargs)
        else:
            raise ValueError(f"unknown schedule {schedule!r}; valid: poly, one_cycle, flat_cos, constant")

    def export(self, fname: str = 'export.safetensors', **kwargs):
        """Export the segmenter for inference as safetensors with its metadata (fastai's own export pickles
        the whole Learner; this one cannot run code when loaded). Load it with
        `dada_fastai.inference.load_model`."""
        from .checkpoint import export_inference
        return export_inference(self, self.path / fname)

    def per_class_iou(self) -> dict[str, float]:
        """Per-class IoU (%) of the last validation."""
        return self.confusion.per_class()

    def evaluate(self, dl=None) -> dict:
        """Validate on `dl` (default: the target validation set): {'miou', 'miou13', 'per_class'} in percent."""
        self.validate(dl=dl)
        iou = iou_from_confusion(self.confusion.cm)
        sub = self.protocol.subset13
        return {'miou': finite_mean(iou), 'miou13': finite_mean(iou[list(sub)]) if sub is not None else None,
                'per_class': self.per_class_iou()}

    def predict_batch(self, x: torch.Tensor, size: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(class map (B,H,W), inverse depth (B,1,H,W) or None) for normalised images, upsampled to `size`."""
        self.model.eval()
        with torch.no_grad():
            seg, depth = self.model(x.to(self.dls.device))
        size = tuple(size or x.shape[-2:])
        return upsample(seg, size).argmax(1), (upsample(depth, size) if depth is not None else None)

    def show_results(self, ds_idx: int = 1, dl=None, max_n: int = 4, figsize=None, **kwargs):
        """Target image, ground truth, prediction and predicted depth (near = warm), one row per image."""
        from fastai.vision.data import get_grid
        from .data import depth_to_rgb
        dl = dl if dl is not None else self.dls[ds_idx].new(shuffle=False, drop_last=False, bs=1)
        n = min(max_n, len(dl.dataset))
        axs = get_grid(4 * n, nrows=n, ncols=4, figsize=figsize or (16, 2.6 * n),
                       title='target image / ground truth / prediction / predicted depth')
        proto = self.protocol
        for i, (x, y) in zip(range(n), dl):  # one image at a time: validation images may differ in size
            pred, depth = self.predict_batch(x, y.shape[-2:])
            dl.decode((x,))[0][0].show(ctx=axs[4 * i])
            axs[4 * i + 1].imshow(proto.colorize(y[0].cpu().numpy()))
            axs[4 * i + 2].imshow(proto.colorize(pred[0].cpu().numpy()))
            if depth is not None:
                axs[4 * i + 3].imshow(depth_to_rgb(depth[0, 0]))
            for a in axs[4 * i:4 * i + 4]:
                a.axis('off')
        return axs


def dada_learner(dls: DataLoaders, method: str | MethodConfig = 'dada', arch: str = 'resnet101',
                 pretrained: bool = False, weights: str | None = None, n_classes: int | None = None,
                 lambdas: Lambdas | None = None, lr: float = 2.5e-4, wd: float = 5e-4, d_lr: float = 1e-4,
                 ndf: int = 64, head_lr_mult: float = 10., opt_func=None, cbs=None, model: DADA | None = None,
                 backbone_kwargs: dict | None = None, on_nan: str | None = 'stop', mode: str = 'faithful',
                 precision: str | None = None, compile: bool | dict = False, bn: str = 'batch',
                 **kwargs) -> DADALearner:
    """Build the DADA segmenter for `dls` (its protocol gives the class count), the discriminators that
    `method` needs, and a `DADALearner` with the reference's recipe as defaults: SGD momentum 0.9, weight
    decay 5e-4, lr 2.5e-4 with the head at 10x, discriminators Adam lr 1e-4 betas (0.9, 0.99).
    `arch` is any timm model name or 'deeplabv2_resnet101' (the reference backbone); `on_nan` ('stop',
    'skip' or None) decides what a non-finite loss does.

    `mode='faithful'` computes what the reference computes, in its order, in IEEE float32 (no TF32 on CUDA).
    `mode='fast'` keeps the losses and gradients but fuses the four backward passes into two, runs in mixed
    precision (`precision`: 'bf16' (default on GPU), 'fp16' with a gradient scaler, or 'fp32' (default on CPU)),
    lets float32 work use TF32, uses channels_last, optionally `torch.compile` (`compile=True`, or a dict of
    `torch.compile` options), and reads values from the device only every 50 iterations.

    `bn='batch'` (the reference) normalises with each training batch's statistics (BatchNorm in training
    mode, running statistics updated); `bn='frozen'` keeps the frozen-affine BatchNorm layers (all of the
    backbone's) in eval mode (`FrozenBatchNorm`): they normalise with their running statistics, which stay
    as loaded. It departs from the reference, and lets fast mode run source and target in one forward
    when both come at the same size."""
    cfg = method_config(method)
    proto = getattr(dls, 'protocol', None) or get_protocol(n_classes or 16)
    n_classes = proto.n_classes
    lambdas = lambdas or Lambdas()
    if model is None:
        model = DADA(n_classes, arch=arch, pretrained=pretrained, weights=weights, depth_block=cfg.depth_block,
                     feature_fusion=cfg.feature_fusion, **(backbone_kwargs or {}))
    if mode not in ('faithful', 'fast'):
        raise ValueError(f"unknown mode {mode!r}; valid: faithful, fast")
    fast = mode == 'fast'
    if not fast and (compile or precision not in (None, 'fp32')):
        raise ValueError('precision and compile apply to the fast mode: pass mode="fast" (the faithful mode '
                         'runs in float32, uncompiled)')
    if bn not in ('batch', 'frozen'):
        raise ValueError(f"unknown bn {bn!r}; valid: batch, frozen")
    discs = nn.ModuleDict({k: Discriminator(1 if k == 'depth' else n_classes, ndf) for k in cfg.adapt})
    trainer = DADATrainer(discs, lambdas, d_lr=d_lr, fused=fast)
    extra = [CudaBackend(tf32=fast)]
    if on_nan:
        extra.append(NonFiniteGuard(on_nan, every=50 if fast and on_nan == 'stop' else 1))
    if bn == 'frozen':
        extra.append(FrozenBatchNorm())
    if fast:
        extra += _fast_mode(model, discs, dls, precision, compile)
    cm = ConfusionMatrix(proto)
    metrics = [MeanIoU(cm)]
    if proto.subset13 is not None:
        metrics.append(MeanIoU(cm, proto.subset13, 'miou13'))
    metrics += list(trainer.terms.values())
    learn = DADALearner(dls, model, loss_func=DADALoss(lambdas), opt_func=opt_func or partial(sgd_reference, wd=wd),
                        lr=lr, splitter=param_groups, metrics=metrics, wd=wd,
                        cbs=[trainer, HeadLR(head_lr_mult), SetEpoch()] + extra + list(cbs or []), **kwargs)
    if fast:
        learn.remove_cb(ProgressCallback)
        learn.add_cb(ThrottledProgress())
    learn.dada_config = {'protocol': proto, 'method': cfg, 'arch': arch, 'lambdas': lambdas, 'confusion': cm,
                         'layers': list((backbone_kwargs or {}).get('layers', ())) or None, 'mode': mode,
                         'bn': bn}
    return learn



def _fast_mode(model: nn.Module, discs: nn.ModuleDict, dls, precision: str | None, compile: bool | dict) -> list:
    """Set the fast mode's memory format and compilation; return its mixed-precision callback."""
    device = getattr(dls, 'device', None)
    on_gpu = device is not None and torch.device(device).type == 'cuda'
    precision = precision or ('bf16' if on_gpu else 'fp32')
    if precision not in ('bf16', 'fp16', 'fp32'):
        raise ValueError(f"unknown precision {precision!r}; valid: bf16, fp16, fp32")
    model.to(memory_format=torch.channels_last)
    discs.to(memory_format=torch.channels_last)
    if compile:
        if not hasattr(model, 'compile_parts'):
            raise ValueError('compile=True needs a DADA model (its parts are compiled, not the whole)')
        model.compile_parts(**(compile if isinstance(compile, dict) else {}))
    return [DeviceMixedPrecision(amp_mode=precision)] if precision != 'fp32' else []
