"""Where a model's depth stands on the toy pair: δ<1.25 on held-out source renders and on the target, by distance,
against what the depth head's output resolution allows, and under controls that each remove one part of the
domain gap (the target rendered from the source's camera, or without its blur, grain and haze).

    dada-fastai train                                  # writes a run folder under runs/
    PYTHONPATH=. python benchmarks/toy_depth.py runs/<run folder>

Depth is recovered as `evaluate` does (`metrics.median_scaled_depth`: 1 / predicted inverse depth, median-scaled
per image to the ground truth, the sky left out); δ<1.25 is the fraction of pixels within 25% of the true depth.
"""
from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from dada_fastai.inference import load_model
from dada_fastai.metrics import median_scaled_depth, within_delta1
from dada_fastai.toy import SKY_DEPTH, ToyConfig, render_scene, scene_rng

BINS = (0, 5, 10, 20, 40, 80, SKY_DEPTH)  # metres


def cell_average(depth: np.ndarray, stride: int) -> np.ndarray:
    """The inverse depth a perfect head of output stride `stride` gives: the true inverse depth averaged over
    stride x stride cells, bilinearly upsampled back."""
    inv = torch.from_numpy(1 / depth.astype(np.float32))[None, None]
    small = F.avg_pool2d(inv, stride, ceil_mode=True)
    return F.interpolate(small, size=depth.shape, mode='bilinear', align_corners=True)[0, 0].numpy()


def measure(predict, toy: ToyConfig, domain: str, n: int) -> dict:
    """δ<1.25 (image mean, as `evaluate`), by distance (pooled pixels) and the pixel share of each distance."""
    per_image, hits, distances = [], [], []
    for i in range(n):
        rgb, _, depth = render_scene(scene_rng(toy.seed, domain, i, 'val'), toy, domain)
        inv_gt = torch.from_numpy(np.where(depth >= SKY_DEPTH, np.nan, 1 / depth).astype(np.float32))
        pred, gt = median_scaled_depth(torch.from_numpy(predict(rgb, depth)), inv_gt)
        hit = within_delta1(pred, gt).numpy()
        per_image.append(hit.mean())
        hits.append(hit)
        distances.append(gt.numpy())
    hit, gt = np.concatenate(hits), np.concatenate(distances)
    which = np.digitize(gt, BINS[1:-1])
    return dict(delta1=float(np.mean(per_image)),
                by_distance=[float(hit[which == b].mean()) if (which == b).any() else float('nan')
                             for b in range(len(BINS) - 1)],
                share=[float((which == b).mean()) for b in range(len(BINS) - 1)])


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('model', help='a run folder, checkpoint or export of a model with the depth block, trained on the toy')
    p.add_argument('--images', type=int, default=50, help='validation scenes per row')
    p.add_argument('--stride', type=int, default=8, help="the depth head's output stride (DeepLab-v2: 8)")
    p.add_argument('--threads', type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model, device='cpu')
    if not model.meta.depth_block:
        raise SystemExit(f'{args.model}: this model has no depth block (source-only or AdvEnt); give a DADA run')
    toy = ToyConfig(**(model.run_config.get('toy') or {}))
    size = model.input_size

    def predict(rgb, depth):
        return model(rgb, size, rgb.shape[:2])[1]

    def bound(rgb, depth):
        return cell_average(depth, args.stride)

    src = toy.camera('source')
    rows = [('source (held-out renders)', predict, toy, 'source'),
            ('target', predict, toy, 'target'),
            ("target from the source's camera", predict,
             replace(toy, target_height=src.height, target_fov=src.fov, target_horizon=src.horizon), 'target'),
            ('target without blur, grain, haze', predict, replace(toy, blur=0., noise=0., visibility=1e12), 'target'),
            (f'source: the truth at 1/{args.stride}', bound, toy, 'source'),
            (f'target: the truth at 1/{args.stride}', bound, toy, 'target')]
    edges = [f'{a:g}-{b:g} m' if b < SKY_DEPTH else f'{a:g} m+' for a, b in zip(BINS[:-1], BINS[1:])]
    table = Table(title=f'depth δ<1.25 of {args.model} on the toy ({args.images} validation scenes per row; '
                        'by distance: pixel share in brackets)')
    table.add_column('images')
    table.add_column('δ<1.25', justify='right')
    for e in edges:
        table.add_column(e, justify='right')
    for name, fn, cfg, domain in rows:
        m = measure(fn, cfg, domain, args.images)
        table.add_row(name, f"{m['delta1']:.3f}",
                      *(f'{d:.2f} ({s:.0%})' for d, s in zip(m['by_distance'], m['share'])))
    Console(width=160).print(table)


if __name__ == '__main__':
    main()
