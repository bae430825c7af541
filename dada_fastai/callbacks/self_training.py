"""Self-training on top of adaptation, as DACS does it: each iteration the mean teacher labels the target batch, a
mixed image pastes half of each source image's classes onto its target image, and the student learns the mixed
image's labels (the source's where pasted, the teacher's pseudo-labels elsewhere, weighted by their confidence)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from fastai.callback.core import Callback
from fastai.data.transforms import Normalize
from fastai.learner import Metric

from ..data import ToBGR
from ..losses import IGNORE_INDEX, berhu_loss, upsample
from ..mixing import (class_mix_masks, confidence_weight, depth_aware_masks, mix, pseudo_labels, strong_augment,
                      weighted_cross_entropy)
from .adversarial import DADATrainer

__all__ = ['SelfTraining', 'PseudoLabelQuality', 'pseudo_label_reports', 'self_training_terms']


def self_training_terms(depth: bool) -> tuple[str, ...]:
    """The loss terms self-training records: the mixed image's cross-entropy (`st`) and, for a network with the depth
    block, its depth loss (`st_depth`)."""
    return ('st', 'st_depth') if depth else ('st',)


class _RGB:
    """To and from (B, 3, H, W) RGB in [0, 1] for images normalised by a DataLoader's batch transforms (`ToBGR`,
    `Normalize`), so that the strong augmentation sees colours as they are."""

    def __init__(self, dl):
        fs = list(getattr(getattr(dl, 'after_batch', None), 'fs', []))
        self.norm = next((f for f in fs if isinstance(f, Normalize)), None)
        self.bgr = any(isinstance(f, ToBGR) for f in fs)

    def to_rgb(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if self.norm is not None:
            x = x * self.norm.std.to(x.device) + self.norm.mean.to(x.device)
        return x.flip(1) if self.bgr else x

    def from_rgb(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flip(1) if self.bgr else x
        if self.norm is not None:
            x = (x - self.norm.mean.to(x.device)) / self.norm.std.to(x.device)
        return x


class SelfTraining(Callback):
    """The self-training half of an iteration (DACS), after the adversarial half (`DADATrainer`, whose source and
    target images it reads), from iteration `start` on:

    1. the teacher (`MeanTeacher`, `learn.teacher`) labels the target batch: pseudo-labels are its argmax, and each
       image weighs them by the share of its pixels whose confidence is at least `threshold` (`confidence='image'`,
       DACS' rule), or each pixel counts only where its own confidence reaches it (`'pixel'`);
    2. per image, ClassMix pastes half of the classes of the source image's labels onto the target image
       (`mix='class'`), or only those of its pixels that are nearer than the target scene they cover
       (`mix='depth'`: the source's true inverse depth against the teacher's predicted one); a source of another
       size than the target is resized to it first;
    3. the mixed image gets the strong augmentation (`augment`: colour jitter and blur), and its labels: the source's
       where pasted (weight `source_weight`), the pseudo-labels elsewhere (their confidence weight);
    4. the student's pixel-weighted cross-entropy on it, times `lambda_st`, and for a network with the depth block a
       berHu loss on the pasted pixels whose source depth is known, times `lambda_depth`, join the iteration's loss:
       in one backward with the others in fast mode (`fused`), in a backward of their own after them otherwise.

    The terms are recorded as `st` and `st_depth` (progress table, history, curves). The last mixed batch stays in
    `example` for `show_results`. The target's labels are never read in training (the training batch has none).
    Its random draws (classes, augmentation) come from a generator of its own, seeded from torch's seed when it is
    made, whose state checkpoints hold (a resumed run draws what the uninterrupted one drew: the DataLoader's own
    draws at an epoch's start would otherwise shift the global generator's)."""
    order = DADATrainer.order + 1  # after the adversarial half, before the non-finite check and the steps

    def __init__(self, threshold: float = 0.968, mix: str = 'class', lambda_st: float = 1., source_weight: float = 1.,
                 lambda_depth: float = 0., start: int = 0, augment: bool = True, depth_scale: float = 1.,
                 fused: bool = False, confidence: str = 'image'):
        if mix not in ('class', 'depth'):
            raise ValueError(f"unknown mix {mix!r}; valid: class, depth")
        self.threshold, self.mix, self.lambda_st, self.source_weight = threshold, mix, lambda_st, source_weight
        self.lambda_depth, self.start, self.augment, self.depth_scale = lambda_depth, start, augment, depth_scale
        self.fused, self.confidence, self.example = fused, confidence, None
        self.generator = torch.Generator().manual_seed(torch.initial_seed() + 1)

    @property
    def name(self) -> str:
        return 'self_training'

    def before_fit(self):
        self.rgb = _RGB(self.dls.train)

    def _on(self) -> bool:
        return self.training and self.train_iter >= self.start and self.learn.dada.x_trg is not None

    def mixed_batch(self) -> dict[str, torch.Tensor]:
        """The mixed batch of this iteration: {'target' (RGB in [0, 1]), 'pseudo', 'confidence', 'mask', 'mixed'
        (normalised, augmented), 'mixed_rgb', 'labels', 'weights', 'depth' (the mixed depth target, NaN where
        unknown, or None)}."""
        dada = self.learn.dada
        x_src, x_trg = dada.x_src, dada.x_trg
        labels = self.learn.yb[0]
        depth = self.learn.yb[1] if len(self.learn.yb) > 1 else None
        size = x_trg.shape[-2:]
        with dada._autocast():
            seg_t, depth_t = self.learn.teacher.predict(x_trg)
        pseudo, conf = pseudo_labels(upsample(seg_t.float(), size))
        if x_src.shape[-2:] != size:  # mixed at the target's size
            x_src = F.interpolate(x_src.float(), size=tuple(size), mode='bilinear', align_corners=False)
            labels = F.interpolate(labels[:, None].float(), size=tuple(size), mode='nearest')[:, 0].long()
            if depth is not None:
                depth = F.interpolate(depth.float().reshape(len(depth), 1, *depth.shape[-2:]), size=tuple(size),
                                      mode='nearest')
        masks = class_mix_masks(labels, self.generator)
        if depth is not None:
            depth = depth.float().reshape(len(depth), 1, *size) * self.depth_scale
        if self.mix == 'depth' and depth is not None and depth_t is not None:
            masks = depth_aware_masks(masks, depth, upsample(depth_t.float(), size))
        weights = mix(torch.full_like(conf, self.source_weight),
                      confidence_weight(conf, self.threshold, self.confidence), masks)
        mixed_rgb = mix(self.rgb.to_rgb(x_src), self.rgb.to_rgb(x_trg), masks)
        if self.augment:
            mixed_rgb = strong_augment(mixed_rgb, generator=self.generator)
        mixed_depth = None if depth is None else torch.where(masks[:, None], depth, torch.full_like(depth, float('nan')))
        return {'target': self.rgb.to_rgb(x_trg), 'pseudo': pseudo, 'confidence': conf, 'mask': masks,
                'mixed': self.rgb.from_rgb(mixed_rgb).to(x_trg.dtype), 'mixed_rgb': mixed_rgb,
                'labels': mix(labels, pseudo, masks), 'weights': weights, 'depth': mixed_depth}

    def _loss(self) -> torch.Tensor:
        dada = self.learn.dada
        b = self.mixed_batch()
        with dada._autocast():
            seg_m, depth_m = self.learn.model(b['mixed'])
        size = b['labels'].shape[-2:]
        st = weighted_cross_entropy(upsample(seg_m.float(), size), b['labels'], b['weights'])
        dada.record('st', st)
        loss = self.lambda_st * st
        if depth_m is not None and 'st_depth' in dada.extra_terms:
            st_depth = berhu_loss(upsample(depth_m.float(), size), b['depth']) if b['depth'] is not None \
                else depth_m.sum() * 0.
            dada.record('st_depth', st_depth)
            loss = loss + self.lambda_depth * st_depth
        self.example = {k: (v[:1].detach() if v is not None else None) for k, v in b.items()}
        return loss

    def state_dict(self) -> dict:
        """The state of its random generator, for checkpoints."""
        return {'generator': self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` saved."""
        self.generator.set_state(state['generator'])

    def after_loss(self):
        if self.fused and self._on():  # one backward for the source, fooling and self-training losses
            self.learn.loss_grad = self.learn.loss_grad + self._loss()

    def after_backward(self):
        if not self.fused and self._on():
            self.learn.dada._scaled(self._loss()).backward()


class _PseudoLabelCounts:
    """The counts behind both reports of the teacher's pseudo-labels, from one teacher pass per validation batch."""

    def __init__(self, threshold: float):
        self.threshold = threshold
        self.reset()

    def reset(self):
        self.right = self.labelled = self.confident = self.pixels = 0.
        self.batch = None

    def accumulate(self, learn):
        teacher = getattr(learn, 'teacher', None)
        if teacher is None or teacher.model is None or learn.xb[0] is self.batch:  # the other report's batch
            return
        self.batch = learn.xb[0]
        label = learn.yb[0]
        seg, _ = teacher.predict(learn.xb[0])
        pseudo, conf = pseudo_labels(upsample(seg.float(), label.shape[-2:]))
        valid = label != IGNORE_INDEX
        self.right += float((pseudo == label)[valid].sum())
        self.labelled += float(valid.sum())
        self.confident += float((conf >= self.threshold).sum())
        self.pixels += conf.numel()


class PseudoLabelQuality(Metric):
    """The teacher's pseudo-labels on the target validation set, as it gives them in training: `pl_acc`, the share of
    labelled pixels where they are right (%), or `pl_conf`, the share of pixels at or above the confidence threshold
    (%). The labels are read for this report only; training never sees them. None before the teacher exists.
    Reports given the same `counts` (`pseudo_label_reports`) share one teacher pass per batch."""

    def __init__(self, kind: str, threshold: float, counts: _PseudoLabelCounts | None = None):
        if kind not in ('acc', 'conf'):
            raise ValueError(f"unknown pseudo-label report {kind!r}; valid: acc, conf")
        self.kind, self.counts = kind, counts or _PseudoLabelCounts(threshold)

    def reset(self):
        self.counts.reset()

    def accumulate(self, learn):
        self.counts.accumulate(learn)

    @property
    def value(self):
        c = self.counts
        hits, count = (c.right, c.labelled) if self.kind == 'acc' else (c.confident, c.pixels)
        return 100. * hits / count if count else None

    @property
    def name(self):
        return f'pl_{self.kind}'


def pseudo_label_reports(threshold: float) -> list[PseudoLabelQuality]:
    """`pl_acc` and `pl_conf`, the two reports of the teacher's pseudo-labels, from one teacher pass per batch."""
    counts = _PseudoLabelCounts(threshold)
    return [PseudoLabelQuality('acc', threshold, counts), PseudoLabelQuality('conf', threshold, counts)]
