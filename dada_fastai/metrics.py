"""Depth accuracy on a target that ships depth (Cityscapes' disparity, the toy pair's exact depth): the standard
monocular-depth figures δ<1.25 and abs-rel, on metric depth recovered from the predicted inverse depth after
per-image median scaling (the prediction's scale is that of the source's depth targets, not the target's)."""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ['DEPTH_NOTE', 'image_depth_errors', 'DepthAccuracy']

DEPTH_NOTE = ('depth = 1 / predicted inverse depth, median-scaled per image to the ground truth; baseline: a '
              'constant depth (the median of the ground truth)')


def image_depth_errors(pred_inv: Tensor, gt_inv: Tensor) -> dict[str, float] | None:
    """δ<1.25 (fraction of pixels with max(d/d*, d*/d) < 1.25) and abs-rel (mean |d - d*| / d*) of one image,
    for the median-scaled prediction and for a constant; None when the image has no valid depth. `pred_inv`
    and `gt_inv` are (H, W) inverse depths at the same size; the ground truth is valid where finite and > 0."""
    gt_inv, pred_inv = gt_inv.float(), pred_inv.float().reshape(gt_inv.shape)
    valid = torch.isfinite(gt_inv) & (gt_inv > 0)
    if not bool(valid.any()):
        return None
    gt = 1 / gt_inv[valid]
    pred = 1 / pred_inv[valid].clamp_min(1e-8)  # a non-positive inverse depth is as far as it gets
    pred = pred * (gt.median() / pred.median())
    const = torch.full_like(gt, float(gt.median()))

    def errors(d):
        ratio = torch.maximum(d / gt, gt / d)
        return float((ratio < 1.25).float().mean()), float(((d - gt).abs() / gt).mean())
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
