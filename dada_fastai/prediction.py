"""From the segmenter's outputs to predictions: logits and inverse depth resized from the model's input size to the
size asked for (the padding cut off where images kept their aspect ratio), and one image's predictions as fastai's
`(decoded, decoded_preds, preds)` triple. `DADALearner.get_preds`/`predict` and `inference.LoadedModel.predict`
both use these."""
from __future__ import annotations

from typing import Sequence

import torch

from .data import TensorClassMap, TensorDepth
from .losses import upsample
from .preprocess import padded_content_size
from .protocols import ClassProtocol

__all__ = ['prediction_to_size', 'prediction_triple']


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
