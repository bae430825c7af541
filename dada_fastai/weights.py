"""Weight files: reading a state dict safely (.pth without unpickling code, .safetensors), the reference
implementation's parameter names, and loading its snapshots (DADA, AdvEnt, the DeepLab ImageNet initialisation) or a
local backbone checkpoint into our network."""
from __future__ import annotations

import argparse
import re
from collections.abc import Mapping
from pathlib import Path
import torch
from torch import nn

from .errors import WeightsError

__all__ = ['WeightsError', 'load_weights_file', 'reference_name', 'load_official_state_dict', 'load_backbone_file']


_HEAD_RENAMES = {'layer6.conv2d_list.': 'classifier.convs.', 'enc4_1.': 'depth.enc1.', 'enc4_2.': 'depth.enc2.',
                 'enc4_3.': 'depth.enc3.', 'dec4.': 'depth.dec.'}


def _to_ours(key: str) -> str:
    """Reference name -> our name (backbone keys are identical, under `backbone.`)."""
    for old, new in _HEAD_RENAMES.items():
        if key.startswith(old):
            return new + key[len(old):]
    return 'backbone.' + key


def reference_name(key: str) -> str:
    """Our parameter name -> the reference implementation's name."""
    for old, new in _HEAD_RENAMES.items():
        if key.startswith(new):
            return old + key[len(new):]
    return key.removeprefix('backbone.')


def load_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from a .pth/.pt (weights only, never unpickling code) or .safetensors file."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f'weights file not found: {path}')
    if path.stat().st_size == 0:
        raise WeightsError(f'weights file is empty (0 bytes): {path}')
    if path.suffix == '.safetensors':
        from safetensors.torch import load_file
        try:
            return load_file(str(path))
        except Exception as e:
            raise WeightsError(f'cannot read safetensors file {path}: {e}') from None
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):  # the `args` of timm training checkpoints
            sd = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if 'weights_only' in str(e) or 'Unsupported global' in str(e) or 'GLOBAL' in str(e):
            globs = sorted(set(re.findall(r'GLOBAL (\S+?)(?:[\s,]|$)', str(e))))
            raise WeightsError(f'refusing {path}: it needs pickle code execution to load '
                               f'({", ".join(globs) or "non-tensor objects"}); only plain tensor state dicts '
                               '(.pth saved from state_dict()) or .safetensors are accepted') from None
        raise WeightsError(f'cannot read weights file {path} (truncated or not a PyTorch file?): {msg}') from None
    for key in ('state_dict', 'model', 'model_state_dict'):
        if isinstance(sd, Mapping) and key in sd and isinstance(sd[key], Mapping):
            sd = sd[key]
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WeightsError(f'{path} does not hold a state dict of tensors')
    return dict(sd)


def _strip_prefix(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop a one-word prefix shared by every key (e.g. `Scale.` in the DeepLab ImageNet initialisation)."""
    firsts = {k.split('.', 1)[0] for k in sd}
    if len(firsts) == 1 and all('.' in k for k in sd) and next(iter(firsts)) not in ('conv1', 'layer1'):
        return {k.split('.', 1)[1]: v for k, v in sd.items()}
    return dict(sd)


def load_official_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    """Load a reference DADA or AdvEnt snapshot into `model` (strict), or the DeepLab ImageNet initialisation
    (keys carry a one-word prefix and an unused `layer5`/`fc` classifier) into its backbone only."""
    sd = _strip_prefix(state_dict)
    is_backbone_init = not any(k.startswith(('layer6.', 'enc4_', 'dec4.')) for k in sd)
    ours = {}
    for k, v in sd.items():
        if k.startswith(('layer5.', 'fc.')):
            continue  # the reference's unused multi-level classifier, the ImageNet classifier
        ours[_to_ours(k)] = v
    target = model.state_dict()
    if is_backbone_init:
        target = {k: v for k, v in target.items() if k.startswith('backbone.')}
    missing = sorted(k for k in set(target) - set(ours) if not _optional(k))
    unexpected = sorted(set(ours) - set(target))
    shape = sorted(k for k in set(ours) & set(target) if ours[k].shape != target[k].shape)
    if missing or unexpected or shape:
        ref = reference_name  # messages name keys as the file does (`enc4_2.weight`, not `depth.enc2.weight`)
        parts = []
        if missing:
            parts.append(f'missing {len(missing)} keys: {_short([ref(k) for k in missing])}')
        if unexpected:
            parts.append(f'unexpected {len(unexpected)} keys: {_short([ref(k) for k in unexpected])}')
        if shape:
            parts.append('shape mismatch: ' + _short([f'{ref(k)} {tuple(ours[k].shape)} vs {tuple(target[k].shape)}'
                                                      for k in shape]))
        raise WeightsError('reference state dict does not fit the model (keys as the reference names them: '
                           + '; '.join(parts) + ')')
    model.load_state_dict({k: v.to(target[k].dtype) for k, v in ours.items()}, strict=not is_backbone_init)
    return model


def _optional(key: str) -> bool:
    """BatchNorm counters that state dicts saved before PyTorch 0.4.1 lack (PyTorch fills them in on load)."""
    return key.endswith('.num_batches_tracked')


def _short(keys: list[str], n: int = 6) -> str:
    return ', '.join(keys[:n]) + (f', ... (+{len(keys) - n})' if len(keys) > n else '')


def load_backbone_file(backbone: nn.Module, path: str | Path) -> None:
    """Load a local backbone checkpoint: a timm checkpoint or the reference's ImageNet initialisation."""
    sd = _strip_prefix(load_weights_file(path))
    sd = {k: v for k, v in sd.items() if not k.startswith(('layer5.', 'fc.', 'head.', 'classifier.'))}
    target = backbone.state_dict()
    if all(k.startswith('model.') for k in target) and not any(k.startswith('model.') for k in sd):
        sd = {'model.' + k: v for k, v in sd.items()}  # timm's FeatureGetterNet (ViT & co.) wraps the model
    missing = sorted(k for k in set(target) - set(sd) if not _optional(k))
    unexpected = sorted(set(sd) - set(target))
    if missing or any(sd[k].shape != target[k].shape for k in set(sd) & set(target)):
        raise WeightsError(f'{path} does not fit the backbone (missing {len(missing)} keys: {_short(missing)}; '
                           f'unexpected {len(unexpected)}: {_short(unexpected)})')
    backbone.load_state_dict({k: v for k, v in sd.items() if k in target})
