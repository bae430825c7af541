"""From the segmenter's outputs to predictions: logits and inverse depth resized from the model's input size to the
size asked for (the padding cut off where images kept their aspect ratio), and one image's predictions as fastai's
`(decoded, decoded_preds, preds)` triple; and how `DADALearner.get_preds` gathers and assembles batches of both
outputs; and test-time augmentation. `DADALearner.get_preds`/`predict`/`evaluate` and `inference.LoadedModel` use
these."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from fastai.callback.core import Callback
from fastai.torch_core import to_concat
from fastcore.foundation import L
from torch import nn

from .data import TensorClassMap, TensorDepth
from .errors import ConfigError
from .losses import upsample
from .preprocess import padded_content_size
from .protocols import ClassProtocol

__all__ = ['prediction_to_size', 'prediction_triple', 'GatherSegDepth', 'item_fit', 'assemble',
           'TestTimeAugmentation', 'TTA_SCALES', 'check_scales']

TTA_SCALES = (0.1, 4.)  # the smallest and largest test-time scale: an image 0.1 of its size, or 4 times it


def prediction_to_size(x: torch.Tensor, input_hw: Sequence[int], out_hw: Sequence[int], fit: str = 'stretch') -> torch.Tensor:
    """Logits or inverse depth (B, C, h, w) that the model gave for images brought to `input_hw` -> at `out_hw`,
    bilinear with align_corners=True as `evaluate` upsamples; with `fit='pad'` (images that kept their aspect
    ratio, padded at the right or bottom) the padding is cut off at the input size first and `out_hw` is the
    images' own size."""
    input_hw, out_hw = tuple(input_hw), tuple(out_hw)
    if fit == 'pad' and out_hw != input_hw:
        ch, cw = padded_content_size(out_hw, input_hw)
        x = upsample(x, input_hw)[..., :ch, :cw]
    return upsample(x, out_hw)


def prediction_triple(probs: torch.Tensor, ids: torch.Tensor, depth: torch.Tensor | None, protocol: ClassProtocol) -> tuple:
    """fastai's `(decoded, decoded_preds, preds)` for one image: `((TensorClassMap (H, W), TensorDepth (1, H, W)),
    (class ids (H, W), depth (1, H, W)), (probabilities (C, H, W), depth (1, H, W)))`, depth None without it."""
    plain = lambda t: t.as_subclass(torch.Tensor) if t is not None else None  # noqa: E731
    probs, ids, depth = plain(probs), plain(ids), plain(depth)
    decoded = (TensorClassMap(ids, codes=list(protocol.classes), protocol=protocol),
               TensorDepth(depth) if depth is not None else None)
    return decoded, (ids, depth), (probs, depth)


class GatherSegDepth(Callback):
    """Keep each batch's raw logits, inverse depth (or None) and input size for `DADALearner.get_preds` (fastai's
    own gathering concatenates predictions before they can be resized, and cannot hold a missing depth)."""

    def before_validate(self):
        self.batches = []

    def after_batch(self):
        seg, depth = self.learn.pred
        det = self.learn.to_detach
        self.batches.append((det(seg), det(depth) if depth is not None else None, tuple(self.learn.xb[0].shape[-2:])))


def item_fit(item, dls) -> str:
    """How `item` was brought to the model's input size: its dataset's way, or the target dataset's."""
    ds = getattr(item, 'ds', None) or getattr(dls, 'target_ds', None)
    return getattr(ds, 'fit', 'stretch')


def assemble(chunks: list, size):
    """Per-batch (or per-image) `(seg, depth)` pairs -> one pair: batches concatenated (fastai's `to_concat`:
    an `L` of images where their sizes differ), images at their own size as `L`s."""
    if not chunks:
        return None
    out = []
    for k in range(len(chunks[0])):
        parts = [c[k] for c in chunks]
        if parts[0] is None:
            out.append(None)
        elif size == 'original':
            out.append(L(p[0] for p in parts))
        else:
            out.append(to_concat(parts))
    return tuple(out)


def check_scales(scales: str | Sequence[float]) -> tuple[float, ...]:
    """Test-time scales as numbers: '0.75,1,1.25' (or a sequence) -> (0.75, 1.0, 1.25); ConfigError naming the value
    unless each is a number from 0.1 to 4 (`TTA_SCALES`)."""
    low, high = TTA_SCALES
    what = f'--scales must be a comma list of numbers from {low:g} to {high:g} (e.g. 0.75,1,1.25), not {scales!r}'
    parts = scales.split(',') if isinstance(scales, str) else list(scales)
    try:
        values = tuple(float(p) for p in parts)
    except (TypeError, ValueError):
        raise ConfigError(what) from None
    if not values or not all(low <= v <= high for v in values):  # NaN fails the comparison too
        raise ConfigError(what)
    return values


class TestTimeAugmentation(nn.Module):
    """A segmenter under test-time augmentation, as the segmentation toolboxes do it: the softmax of the logits and the
    inverse depth averaged over horizontal flips (`flip`) and image scales (`scales`, each image resized bilinearly),
    every output brought back to the input's size. Returns `(log of the averaged probabilities, averaged depth)`: log
    probabilities are logits whose softmax is the average, so that metrics and `get_preds` take them as they are."""

    def __init__(self, model: nn.Module, flip: bool = True, scales: Sequence[float] = (1.,)):
        super().__init__()
        if not scales or any(not s > 0 for s in scales):
            raise ValueError(f'test-time scales must be positive, not {list(scales)}')
        self.model, self.flip, self.scales = model, flip, tuple(float(s) for s in scales)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        size = tuple(x.shape[-2:])
        probs, depths, n = 0., 0., 0
        for s in self.scales:
            xs = x if s == 1 else F.interpolate(x, scale_factor=s, mode='bilinear', align_corners=False)
            for flipped in ((False, True) if self.flip else (False,)):
                seg, depth = self.model(xs.flip(-1) if flipped else xs)
                seg = upsample(seg.float(), size)
                depth = upsample(depth.float(), size) if depth is not None else None
                if flipped:
                    seg = seg.flip(-1)
                    depth = depth.flip(-1) if depth is not None else None
                probs = probs + F.softmax(seg, 1)
                depths = depths + depth if depth is not None else None
                n += 1
        return (probs / n).clamp_min(1e-30).log(), (depths / n if depths is not None else None)
