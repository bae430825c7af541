"""DADA's losses and the math of one training iteration, as plain functions.

The training callbacks call these functions; the parity tests run them, through the iteration that training runs
(`learner.run_iteration`), against the reference's numbers.
Conventions of the reference: predictions are upsampled (bilinear, align_corners=True) to the label size
before any loss; the discriminator labels source 0 and target 1.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .methods import ADAPT_MAPS

__all__ = ['IGNORE_INDEX', 'SOURCE_LABEL', 'TARGET_LABEL', 'ADAPT_MAPS', 'upsample', 'seg_loss', 'berhu_loss',
           'weighted_self_information', 'dada_fusion', 'adaptation_map', 'bce_to_label', 'source_loss',
           'fooling_loss', 'discriminator_loss', 'Lambdas', 'set_requires_grad']

IGNORE_INDEX = 255  # label value excluded from the segmentation loss and the metrics
SOURCE_LABEL, TARGET_LABEL = 0., 1.  # the reference's domain labels (the paper writes the opposite)


def upsample(x: Tensor, size: Sequence[int]) -> Tensor:
    """Bilinear upsampling with align_corners=True, as the reference does before losses and discriminators."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode='bilinear', align_corners=True)


def seg_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy averaged over the pixels whose label is not 255 (logits already at the label size)."""
    return F.cross_entropy(logits, labels.long(), ignore_index=IGNORE_INDEX)


def berhu_loss(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Reverse Huber loss of the reference: c = 0.2 max|e| over the batch (a constant for the gradient),
    |e| where |e| <= c else (e^2 + c^2) / (2c), averaged over the pixels. `mask` (or a non-finite or zero
    target, i.e. missing or sparse depth) leaves pixels out of both c and the mean."""
    target = target.reshape(pred.shape)
    valid = torch.isfinite(target) & (target > 0)
    if mask is not None:
        valid = valid & mask.reshape(pred.shape).bool()
    err = pred - torch.where(valid, target, pred.detach())  # 0 where depth is missing
    abs_err = err.abs()
    c = (0.2 * abs_err.detach().amax()).clamp_min(1e-12)
    per_pixel = torch.where(abs_err <= c, abs_err, (err ** 2 + c ** 2) / (2 * c))
    return (per_pixel * valid).sum() / valid.sum().clamp_min(1)


def weighted_self_information(prob: Tensor) -> Tensor:
    """The surprisal map I = -p log2(p + 1e-30) / log2(C) of softmax probabilities (B, C, H, W)."""
    return -prob * torch.log2(prob + 1e-30) / math.log2(prob.shape[1])


def dada_fusion(surprisal: Tensor, depth: Tensor) -> Tensor:
    """DADA's fusion: the surprisal map weighted by the predicted inverse depth (broadcast over classes)."""
    return surprisal * depth


def adaptation_map(seg: Tensor, depth: Tensor | None, kind: str) -> Tensor:
    """What a discriminator sees for `kind`: 'surprisal' (AdvEnt), 'depth' (inverse depth) or 'dada' (both
    fused). Inputs are upsampled predictions."""
    if kind == 'surprisal':
        return weighted_self_information(F.softmax(seg, dim=1))
    if depth is None:
        raise ValueError(f'adaptation on {kind!r} needs a model with the depth block')
    if kind == 'depth':
        return depth
    if kind == 'dada':
        return dada_fusion(weighted_self_information(F.softmax(seg, dim=1)), depth)
    raise ValueError(f'unknown adaptation map {kind!r}; valid: {", ".join(ADAPT_MAPS)}')


def bce_to_label(d_out: Tensor, label: float) -> Tensor:
    """BCE-with-logits of a discriminator's output against a constant domain label."""
    return F.binary_cross_entropy_with_logits(d_out, torch.full_like(d_out, label))


@dataclass
class Lambdas:
    """Loss weights of the reference recipe."""
    seg: float = 1.
    depth: float = 1e-3
    adv: float = 1e-3


def source_loss(seg: Tensor, depth: Tensor | None, labels: Tensor, depth_target: Tensor | None,
                lambdas: Lambdas = Lambdas()) -> tuple[Tensor, dict[str, Tensor]]:
    """lambda_seg CE + lambda_depth berHu on upsampled source predictions; returns (total, parts)."""
    parts = {'seg': seg_loss(seg, labels)}
    total = lambdas.seg * parts['seg']
    if depth is not None and depth_target is not None:
        parts['depth'] = berhu_loss(depth, depth_target.reshape(depth.shape))
        total = total + lambdas.depth * parts['depth']
    return total, parts


def fooling_loss(discriminator: nn.Module, fused_target: Tensor) -> Tensor:
    """Adversarial loss of the segmenter: target maps should look like source ones to the discriminator."""
    return bce_to_label(discriminator(fused_target), SOURCE_LABEL)


def discriminator_loss(discriminator: nn.Module, fused: Tensor, label: float) -> Tensor:
    """Discriminator loss on detached maps of one domain (`SOURCE_LABEL` or `TARGET_LABEL`)."""
    return bce_to_label(discriminator(fused.detach()), label)


def set_requires_grad(module: nn.Module, flag: bool) -> None:
    """Freeze or unfreeze a discriminator (the reference toggles requires_grad around the fooling loss)."""
    for p in module.parameters():
        p.requires_grad_(flag)
