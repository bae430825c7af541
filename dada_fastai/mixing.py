"""The maths of self-training, as plain functions: the mean teacher's update, pseudo-labels and their confidence weight,
ClassMix and the depth-aware mix, the strong augmentation of a mixed image, and the pixel-weighted cross-entropy.

Conventions: labels are (B, H, W) int64 train ids with 255 ignored; images are (B, 3, H, W) RGB in [0, 1] where this
module augments them; inverse depths are (B, 1, H, W) with larger values nearer and NaN (or 0) where unknown. Random
draws come from torch's global generator (or the one given), so that a seeded run is repeatable and a resumed run,
whose checkpoint holds the generator's state, goes on exactly."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .losses import IGNORE_INDEX

__all__ = ['ema_alpha', 'ema_update', 'pseudo_labels', 'confidence_weight', 'class_mix_masks', 'depth_aware_masks',
           'mix', 'strong_augment', 'weighted_cross_entropy']


def ema_alpha(step: int, alpha: float) -> float:
    """The mean teacher's rate at optimizer step `step` (counted from 0): min(1 - 1 / (step + 1), alpha), so that the
    teacher follows the student closely at first (the published ramp of DACS, CorDA and DAFormer)."""
    return min(1. - 1. / (step + 1), alpha)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, alpha: float) -> None:
    """teacher = alpha teacher + (1 - alpha) student, for every parameter and every floating-point buffer (BatchNorm's
    running statistics); other buffers (counters) are copied. The modules must have the same structure."""
    for t, s in zip(teacher.parameters(), student.parameters()):
        t.mul_(alpha).add_(s.detach(), alpha=1. - alpha)
    for t, s in zip(teacher.buffers(), student.buffers()):
        if t.is_floating_point():
            t.mul_(alpha).add_(s.detach(), alpha=1. - alpha)
        else:
            t.copy_(s)


def pseudo_labels(logits: Tensor) -> tuple[Tensor, Tensor]:
    """(labels (B, H, W) int64: the argmax, confidences (B, H, W): the softmax's maximum) of a teacher's logits."""
    conf, labels = F.softmax(logits.float(), dim=1).max(1)
    return labels, conf


def confidence_weight(conf: Tensor, threshold: float, per: str = 'image') -> Tensor:
    """The pseudo-labels' weights (B, H, W) from their confidences (B, H, W): per image (DACS' rule), every pixel of an
    image weighs the share of its pixels whose confidence is at least `threshold`; per pixel, a pixel weighs 1 when its
    own confidence is at least `threshold`, else 0 (it is ignored)."""
    confident = (conf >= threshold).float()
    if per == 'pixel':
        return confident
    if per != 'image':
        raise ValueError(f"unknown confidence weighting {per!r}; valid: image, pixel")
    return confident.flatten(1).mean(1)[:, None, None].expand_as(conf)


def class_mix_masks(labels: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """ClassMix masks (B, H, W) bool, one per image: half of the classes present in that image's `labels` (255 left
    out; an odd count rounds up), chosen at random, mark the pixels to paste."""
    masks = torch.zeros_like(labels, dtype=torch.bool)
    for i, lab in enumerate(labels):
        classes = lab.unique()
        classes = classes[classes != IGNORE_INDEX]
        if not len(classes):
            continue
        chosen = classes[torch.randperm(len(classes), generator=generator, device='cpu')[:(len(classes) + 1) // 2]
                         .to(classes.device)]
        masks[i] = torch.isin(lab, chosen)
    return masks


def depth_aware_masks(masks: Tensor, source_depth: Tensor, target_depth: Tensor) -> Tensor:
    """Keep a pasted source pixel only where the source is nearer than the target scene it covers: its inverse depth
    larger than the target's (occlusion-aware mixing). Where either depth is unknown (NaN, or 0 for the source) the
    ClassMix mask is kept as it is. Depths (B, 1, H, W) or (B, H, W), on one scale."""
    src, trg = source_depth.reshape(masks.shape).float(), target_depth.reshape(masks.shape).float()
    known = torch.isfinite(src) & (src > 0) & torch.isfinite(trg)
    return masks & (~known | (src > trg))


def mix(source: Tensor, target: Tensor, masks: Tensor) -> Tensor:
    """`source` where `masks` is set, `target` elsewhere: images (B, C, H, W), labels (B, H, W) or weights alike."""
    m = masks if masks.dim() == source.dim() else masks.unsqueeze(1)
    return torch.where(m, source, target)


def _gaussian_kernel(sigma: float, size: int, device, dtype) -> Tensor:
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    k = torch.exp(-x ** 2 / (2 * sigma ** 2))
    return k / k.sum()


def _blur(img: Tensor, sigma: float) -> Tensor:
    """A Gaussian blur of one image (3, H, W), its kernel about a tenth of the image's shorter side (odd), as DACS."""
    size = max(3, int(math.ceil(0.1 * min(img.shape[-2:]))) // 2 * 2 + 1)
    k = _gaussian_kernel(sigma, size, img.device, img.dtype)
    x = F.pad(img[None], (size // 2,) * 4, mode='reflect')
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(3, 1, 1, -1), groups=3)
    x = F.conv2d(x, k.view(1, 1, -1, 1).expand(3, 1, -1, 1), groups=3)
    return x[0]


def strong_augment(images: Tensor, jitter: float = 0.2, p_jitter: float = 0.8, p_blur: float = 0.5,
                   sigma: tuple[float, float] = (0.15, 1.15), generator: torch.Generator | None = None) -> Tensor:
    """The strong augmentation of mixed images (DACS, DAFormer): per image, with probability `p_jitter` a colour jitter
    of strength `jitter` (brightness, contrast, saturation and hue, torchvision's `ColorJitter`, in random order), and
    with probability `p_blur` a Gaussian blur of sigma drawn in `sigma`. Images (B, 3, H, W) RGB in [0, 1]."""
    from torchvision.transforms.v2 import functional as TF
    out = []
    draw = lambda: float(torch.rand((), generator=generator))  # noqa: E731
    for img in images.float():
        if draw() < p_jitter:
            for op in torch.randperm(4, generator=generator).tolist():
                f = 1 + (2 * draw() - 1) * jitter  # a factor in [1 - jitter, 1 + jitter]
                if op == 0:
                    img = TF.adjust_brightness(img, f)
                elif op == 1:
                    img = TF.adjust_contrast(img, f)
                elif op == 2:
                    img = TF.adjust_saturation(img, f)
                else:
                    img = TF.adjust_hue(img, (2 * draw() - 1) * min(jitter, 0.5))
        if draw() < p_blur:
            img = _blur(img, sigma[0] + draw() * (sigma[1] - sigma[0]))
        out.append(img.clamp(0, 1))
    return torch.stack(out).to(images.dtype)


def weighted_cross_entropy(logits: Tensor, labels: Tensor, weights: Tensor) -> Tensor:
    """The pixel-weighted cross-entropy of self-training: mean over all pixels of weight x CE (ignored pixels count
    zero), with the logits upsampled to the labels' size beforehand by the caller."""
    ce = F.cross_entropy(logits.float(), labels.long(), ignore_index=IGNORE_INDEX, reduction='none')
    return (ce * weights * (labels != IGNORE_INDEX)).mean()
