"""Evaluation metrics, one set for the Learner's validation and for `evaluate`:

- segmentation: the confusion matrix at the label's full resolution (logits upsampled before the argmax, as the
  reference evaluates), per-class IoU, mIoU and the 16-class protocol's mIoU* (13 classes);
- depth accuracy on a target that ships depth (Cityscapes' disparity, the toy pair's exact depth): the standard
  monocular-depth figures δ<1.25 and abs-rel, on metric depth recovered from the predicted inverse depth after
  per-image median scaling (the prediction's scale is that of the source's depth targets, not the target's)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from fastai.callback.core import Callback
from fastai.learner import Metric
from torch import Tensor

from .losses import IGNORE_INDEX, upsample
from .protocols import ClassProtocol

__all__ = ['confusion_matrix', 'iou_from_confusion', 'finite_mean', 'segmentation_scores', 'ConfusionMatrix',
           'MeanIoU', 'PerImageMIoU', 'DEPTH_NOTE', 'median_scaled_depth', 'within_delta1', 'image_depth_errors', 'DepthAccuracy',
           'DepthDelta1']


# ---------------------------------------------------------------------------------------------------------
# Segmentation
# ---------------------------------------------------------------------------------------------------------
def confusion_matrix(pred: Tensor, label: Tensor, n_classes: int) -> Tensor:
    """Confusion matrix (rows: ground truth, cols: prediction) over pixels whose label is valid."""
    valid = label != IGNORE_INDEX
    idx = label[valid].long() * n_classes + pred[valid].long()
    return torch.bincount(idx, minlength=n_classes ** 2).reshape(n_classes, n_classes)


def iou_from_confusion(cm: np.ndarray | Tensor) -> np.ndarray:
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


def segmentation_scores(cm: np.ndarray | Tensor, protocol: ClassProtocol) -> dict:
    """{'miou', 'miou13', 'per_class'} (%) of a confusion matrix: mIoU over the classes present, mIoU* over the
    13-class subset of the 16-class protocol (None for the others), and {class name: IoU} (None for a class absent
    from labels and predictions)."""
    iou = iou_from_confusion(cm)
    sub = protocol.subset13
    return {'miou': finite_mean(iou), 'miou13': finite_mean(iou[list(sub)]) if sub is not None else None,
            'per_class': {c: finite_mean(v) for c, v in zip(protocol.classes, iou)}}


class ConfusionMatrix:
    """The confusion matrix of a validation pass at the label's full resolution (logits upsampled
    bilinearly, align_corners=True, before the argmax, as the reference evaluates)."""

    def __init__(self, protocol: ClassProtocol):
        self.protocol = protocol
        self.reset()

    def reset(self):
        """Start a new pass."""
        self.cm = torch.zeros(self.protocol.n_classes, self.protocol.n_classes, dtype=torch.long)

    def accumulate(self, seg: Tensor, label: Tensor):
        """Add a batch: logits (B, C, h, w) and labels (B, H, W) at their full resolution."""
        pred = upsample(seg, label.shape[-2:]).argmax(1)
        self.cm += confusion_matrix(pred, label, self.protocol.n_classes).cpu()

    def scores(self) -> dict:
        """`segmentation_scores` of the accumulated matrix."""
        return segmentation_scores(self.cm, self.protocol)

    def per_class(self) -> dict[str, float | None]:
        """{class name: IoU %} of the accumulated matrix (None for a class absent from labels and predictions)."""
        return self.scores()['per_class']


class PerImageMIoU(Callback):
    """Each validation image's own mIoU (%, NaN for an image whose labels and prediction share no class), in
    `values`: what the negative transfer rate compares between an adapted model and its source-only baseline."""

    def __init__(self, protocol: ClassProtocol):
        self.protocol, self.values = protocol, []

    def before_validate(self):
        self.values = []

    def after_batch(self):
        if self.training:
            return
        seg, label = self.learn.pred[0], self.learn.yb[0]
        pred = upsample(seg.float(), label.shape[-2:]).argmax(1)
        for p, lab in zip(pred, label):
            miou = finite_mean(iou_from_confusion(confusion_matrix(p, lab, self.protocol.n_classes).cpu()))
            self.values.append(float('nan') if miou is None else miou)


class MeanIoU(Metric):
    """mIoU (%) on the validation set, over all classes or a subset (mIoU* of the 16-class protocol).
    The metric without a subset fills the shared `ConfusionMatrix` (and `depth`, on batches with the
    target's depth); put it first."""

    def __init__(self, cm: ConfusionMatrix, subset: Sequence[int] | None = None, name: str = 'miou',
                 depth: DepthAccuracy | None = None):
        self.cm, self.subset, self._name, self.depth = cm, subset, name, depth

    def reset(self):
        if self.subset is None:
            self.cm.reset()
            if self.depth is not None:
                self.depth.reset()

    def accumulate(self, learn):
        if self.subset is None:
            self.cm.accumulate(learn.pred[0], learn.yb[0])
            gt = getattr(learn, 'depth_yb', None)
            if self.depth is not None and gt is not None and learn.pred[1] is not None:
                self.depth.accumulate(upsample(learn.pred[1].float(), gt.shape[-2:]), gt)

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
# Depth
# ---------------------------------------------------------------------------------------------------------

DEPTH_NOTE = ('depth = 1 / predicted inverse depth, median-scaled per image to the ground truth and capped at its '
              'farthest depth; baseline: a constant depth (the median of the ground truth)')


def median_scaled_depth(pred_inv: Tensor, gt_inv: Tensor) -> tuple[Tensor, Tensor] | None:
    """(predicted depth, true depth) of the pixels with valid ground truth (finite and > 0), the prediction
    1 / `pred_inv` median-scaled to the truth, then capped at the image's farthest true depth (as the standard
    protocol caps it at 80 m on KITTI), so that a non-positive inverse depth counts as that depth, not as 1e8 m, and
    abs-rel stays bounded; None when no pixel is valid. `pred_inv` and `gt_inv` are inverse depths at the same
    size."""
    gt_inv, pred_inv = gt_inv.float(), pred_inv.float().reshape(gt_inv.shape)
    valid = torch.isfinite(gt_inv) & (gt_inv > 0)
    if not bool(valid.any()):
        return None
    gt = 1 / gt_inv[valid]
    pred = 1 / pred_inv[valid].clamp_min(1e-8)  # a non-positive inverse depth is as far as it gets
    return (pred * (gt.median() / pred.median())).clamp_max(gt.max()), gt


def within_delta1(pred: Tensor, gt: Tensor) -> Tensor:
    """Which pixels' depth is within 25% of the truth: max(d/d*, d*/d) < 1.25 (δ<1.25 is their share)."""
    return torch.maximum(pred / gt, gt / pred) < 1.25


def image_depth_errors(pred_inv: Tensor, gt_inv: Tensor) -> dict[str, float] | None:
    """δ<1.25 (fraction of pixels with max(d/d*, d*/d) < 1.25) and abs-rel (mean |d - d*| / d*) of one image,
    for the median-scaled prediction (`median_scaled_depth`) and for a constant; None when the image has no valid
    depth. `pred_inv` and `gt_inv` are (H, W) inverse depths at the same size; the ground truth is valid where
    finite and > 0."""
    scaled = median_scaled_depth(pred_inv, gt_inv)
    if scaled is None:
        return None
    pred, gt = scaled
    const = torch.full_like(gt, float(gt.median()))

    def errors(d):
        return float(within_delta1(d, gt).float().mean()), float(((d - gt).abs() / gt).mean())
    (d1, rel), (c1, crel) = errors(pred), errors(const)
    return {'delta1': d1, 'abs_rel': rel, 'baseline_delta1': c1, 'baseline_abs_rel': crel}


class DepthAccuracy:
    """Image-averaged depth errors over a validation pass (`image_depth_errors` per image)."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.sums, self.n = {}, 0

    def accumulate(self, pred_inv: Tensor, gt_inv: Tensor) -> None:
        """Predicted (B, 1, H, W) and ground-truth (B, H, W) or (B, 1, H, W) inverse depths, at the same size."""
        for p, g in zip(pred_inv.detach().cpu(), gt_inv.detach().cpu()):
            errs = image_depth_errors(p.reshape(g.shape[-2:]), g.reshape(g.shape[-2:]))
            if errs is None:
                continue
            self.n += 1
            for k, v in errs.items():
                self.sums[k] = self.sums.get(k, 0.) + v

    def result(self) -> dict | None:
        """{'delta1', 'abs_rel', 'baseline_delta1', 'baseline_abs_rel', 'images', 'note'}; None without depth."""
        if not self.n:
            return None
        return {**{k: round(v / self.n, 4) for k, v in self.sums.items()}, 'images': self.n, 'note': DEPTH_NOTE}


class DepthDelta1(Metric):
    """δ<1.25 of the validation's depth (`DepthAccuracy`, filled by the `MeanIoU` that shares it) as a column of
    the progress table, `history.csv` and the curves; None on a validation without depth."""

    def __init__(self, depth: DepthAccuracy, name: str = 'delta1'):
        self.depth, self._name = depth, name

    def reset(self):
        pass  # the MeanIoU that fills `depth` resets it

    def accumulate(self, learn):
        pass

    @property
    def value(self):
        result = self.depth.result()
        return None if result is None else result['delta1']

    @property
    def name(self):
        return self._name
