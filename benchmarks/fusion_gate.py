"""What DADA's fusion gate does on the toy pair: the gate `relu(dec(e))` that multiplies the segmentation features,
measured on held-out source renders and on target validation scenes, and the target mIoU when the gate is replaced
by a constant per channel (its target mean, its source mean, ones).

    dada-fastai train --method depth_source_only       # or any run of a method with fusion (dada, s3, s5, s6)
    PYTHONPATH=. python benchmarks/fusion_gate.py runs/<run folder>

A gate whose per-pixel variation the classifier relies on loses much to its mean; one whose level differs between
the domains loses much to the other domain's mean.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from dada_fastai.inference import load_model
from dada_fastai.metrics import confusion_matrix, iou_from_confusion
from dada_fastai.toy import ToyConfig, render_scene, scene_rng


def scenes(toy: ToyConfig, domain: str, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(image, labels) of `n` validation scenes of a domain, as `toy_depth.py` draws them."""
    return [render_scene(scene_rng(toy.seed, domain, i, 'val'), toy, domain)[:2] for i in range(n)]


class Gate:
    """Records the gate of every forward of the depth block, or replaces it by a constant per channel."""

    def __init__(self, block: torch.nn.Module):
        self.block, self.forward, self.seen, self.constant = block, block.forward, [], None
        block.forward = self

    def __call__(self, x):
        depth, gate = self.forward(x)
        self.seen.append(gate.detach().float().cpu())
        if self.constant is not None:
            gate = self.constant.to(gate).view(1, -1, 1, 1).expand_as(gate)
        return depth, gate

    def pooled(self) -> torch.Tensor:
        """The recorded gates as (channels, pixels); clears the record."""
        out = torch.cat([g.permute(1, 0, 2, 3).flatten(1) for g in self.seen], 1)
        self.seen = []
        return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('model', help='a run folder, checkpoint or export of a model with feature fusion, trained on the toy')
    p.add_argument('--images', type=int, default=50, help='validation scenes per domain')
    p.add_argument('--threads', type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model, device='cpu')
    if not (model.meta.depth_block and model.meta.feature_fusion):
        raise SystemExit(f'{args.model}: this model has no fusion gate (no depth block, or no feature fusion); '
                         'give a run of dada, s3, s5, s6 or depth_source_only')
    toy = ToyConfig(**(model.run_config.get('toy') or {}))
    size, n_classes = model.input_size, model.meta.n_classes
    gate = Gate(model.model.depth)

    def target_miou(data) -> float:
        cm = sum(confusion_matrix(torch.from_numpy(model(rgb, size, rgb.shape[:2])[0].astype(np.int64)),
                                  torch.from_numpy(labels.astype(np.int64)), n_classes) for rgb, labels in data)
        return float(np.nanmean(iou_from_confusion(cm)))

    source, target = scenes(toy, 'source', args.images), scenes(toy, 'target', args.images)
    for rgb, _ in source:
        model(rgb, size, rgb.shape[:2])
    gates = {'source': gate.pooled()}
    miou = target_miou(target)
    gates['target'] = gate.pooled()
    stats = Table(title=f'fusion gate of {args.model} ({args.images} validation scenes per domain)')
    for col in ('images', 'mean', 'zero (share of values)', 'channels never open'):
        stats.add_column(col, justify='left' if col == 'images' else 'right')
    for name, g in gates.items():
        stats.add_row(name, f'{g.mean():.3f}', f'{(g == 0).float().mean():.1%}', f'{(g.amax(1) == 0).sum()}/{len(g)}')
    means = {name: g.mean(1) for name, g in gates.items()}
    ablation = Table(title='target mIoU (%) with the gate replaced by a constant per channel')
    ablation.add_column('gate')
    ablation.add_column('target mIoU', justify='right')
    ablation.add_row('as trained', f'{miou:.2f}')
    for name, constant in (('its target mean', means['target']), ('its source mean', means['source']),
                           ('ones (no fusion)', torch.ones_like(means['source']))):
        gate.constant = constant
        ablation.add_row(name, f'{target_miou(target):.2f}')
        gate.seen = []
    console = Console(width=120)
    console.print(stats)
    console.print(f'per-channel means of the two domains: mean |difference| '
                  f'{(means["source"] - means["target"]).abs().mean():.3f}, correlation '
                  f'{np.corrcoef(means["source"], means["target"])[0, 1]:.3f}')
    console.print(ablation)


if __name__ == '__main__':
    main()
