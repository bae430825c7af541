"""ONNX export of a trained segmenter (`dada-fastai export RUN --format onnx`), the only module that imports onnx:
inputs of any height and width, outputs the class logits and the inverse depth as the network returns them, and the
preprocessing a deployer must reproduce recorded in the file's metadata (`preprocessing`)."""
from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from .data import normalization
from .errors import RunError
from .meta import RunMeta
from .preprocess import parse_size
from .storage import atomic_write_bytes
from .version import __version__

__all__ = ['OPSET', 'INPUT_NAME', 'preprocessing', 'export_onnx']

OPSET = 17  # the ONNX operator set written (onnxruntime 1.14 and later run it)
INPUT_NAME = 'image'


class _Outputs(nn.Module):
    """The segmenter with its outputs as the file names them: (logits, inverse depth), or the logits alone for a network
    without the depth block."""

    def __init__(self, model: nn.Module, depth: bool):
        super().__init__()
        self.model, self.depth = model, depth

    def forward(self, x: torch.Tensor):
        seg, depth = self.model(x)
        return (seg, depth) if self.depth else seg


def preprocessing(meta: RunMeta, run_config: Mapping | None = None) -> dict[str, str]:
    """What a deployer must do to an image before the network, and what the outputs are, as metadata (string
    values; lists and mappings as JSON): channel order, scale, mean and std, the input size the run used and how images
    were brought to it, the class names and colours, the protocol, the method's parts and the package version."""
    from fastai.vision.augment import Normalize
    tfms = normalization(meta.norm or 'imagenet', meta.arch)
    norm = next((t for t in tfms if isinstance(t, Normalize)), None)
    mean = [round(float(v), 8) for v in norm.mean.flatten().cpu()] if norm is not None else [0., 0., 0.]
    std = [round(float(v), 8) for v in norm.std.flatten().cpu()] if norm is not None else [1., 1., 1.]
    bgr = any(type(t).__name__ == 'ToBGR' for t in tfms)
    size = meta.target_size or parse_size((run_config or {}).get('target_size'))
    outputs = {'logits': '(N, C, h, w) class scores at 1/8 of the input size; upsample bilinearly (align_corners=True) '
                         'to the input size, then argmax over C'}
    if meta.depth_block:
        outputs['inverse_depth'] = ('(N, 1, h, w) inverse depth in the convention of the run\'s source times its '
                                    'depth_scale (see dada-fastai predict --format depth)')
    return {
        'dada_fastai_version': __version__,
        'input': f'{INPUT_NAME}: float32 (N, 3, H, W), any H and W',
        'channel_order': 'BGR' if bgr else 'RGB',
        'scale': '1/255',
        'mean': json.dumps(mean),
        'std': json.dumps(std),
        'normalization': f'{meta.norm or "imagenet"}: x = (pixel / 255 - mean) / std per channel, channels in '
                         f'{"BGR" if bgr else "RGB"} order',
        'input_size': f'{size[0]}x{size[1]}' if size else 'unknown',
        'fit': meta.fit + (': resized bicubically to input_size' if meta.fit == 'stretch' else
                           ': aspect kept, resized bicubically to fit input_size, padded black at the right or bottom'),
        'protocol': meta.protocol.name,
        'classes': json.dumps(list(meta.protocol.classes)),
        'palette': json.dumps([list(c) for c in meta.protocol.palette]),
        'arch': meta.arch,
        'method': (run_config or {}).get('method') or 'unknown',
        'depth_scale': str((run_config or {}).get('depth_scale', 'unknown')),
        'outputs': json.dumps(outputs),
    }


def _onnx():
    try:
        import onnx
    except ImportError:
        raise RunError('--format onnx needs the onnx package: pip install "dada-fastai[onnx]" (from a checkout: pip '
                       'install ".[onnx]")') from None
    return onnx


def export_onnx(model: nn.Module, meta: RunMeta, path: str | Path, run_config: Mapping | None = None,
                opset: int = OPSET) -> Path:
    """Write `model` (in eval mode, on the CPU, float32) as ONNX to `path`, atomically: input `image` (N, 3, H, W) with
    dynamic batch, height and width; outputs `logits` and, with the depth block, `inverse_depth`; the preprocessing
    in its metadata (`preprocessing`). Uses torch's TorchScript exporter, which needs onnx alone (the newer one also
    needs onnxscript)."""
    onnx = _onnx()
    model = model.eval().float().cpu()
    names = ['logits', 'inverse_depth'] if meta.depth_block else ['logits']
    axes = {INPUT_NAME: {0: 'batch', 2: 'height', 3: 'width'}}
    axes |= {n: {0: 'batch', 2: 'out_height', 3: 'out_width'} for n in names}
    size = meta.target_size or (64, 64)
    example = torch.zeros(1, 3, *size)
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter('ignore')  # the exporter's deprecation and tracer notes: not the user's concern
        torch.onnx.export(_Outputs(model, meta.depth_block), (example,), buf, dynamo=False, input_names=[INPUT_NAME],
                          output_names=names, dynamic_axes=axes, opset_version=opset)
    proto = onnx.load_from_string(buf.getvalue())
    for key, value in preprocessing(meta, run_config).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = (f'dada-fastai {meta.arch} segmenter ({meta.protocol.n_classes} classes); the metadata says how '
                        'to prepare its input')
    onnx.checker.check_model(proto)
    return atomic_write_bytes(path, proto.SerializeToString())
