"""Throughput of the paired training data pipeline at the paper's sizes.

Builds a synthetic SYNTHIA-RAND-CITYSCAPES (published 'raw' layout: 16-bit 3-channel labels and depth) and a
synthetic Cityscapes at full resolution in a temporary folder, with smooth random content that PNG compresses
about as well as the real images (pure noise would make unrealistically large files, flat colours unrealistically
small ones), then iterates `dls.train` of `dada_dataloaders` (bs 1, source 760x1280, target 512x1024, the
reference normalisation, CPU tensors) and reports the paired training samples prepared per second for each
number of DataLoader workers. The first batch (worker start-up) is not timed. `--profile` adds the time of each
stage of one sample (decoding, label mapping, resizing, collation); `--cpu-share` also times the pipeline without
its batch transforms, which run on the GPU when training on one.

    python benchmarks/data_pipeline.py                              # 40 images, 40 batches, 0 and 2 workers
    python benchmarks/data_pipeline.py --n-images 20 --batches 20 --workers 0,1,2 --profile --cpu-share
    python benchmarks/data_pipeline.py --data /tmp/dada_bench       # keep (or reuse) the generated data
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from dada_fastai.data import PAPER_SOURCE_SIZE, PAPER_TARGET_SIZE, dada_dataloaders
from dada_fastai.datasets import open_dataset, write_cityscapes_sample, write_synthia_sample

SYNTHIA_SIZE = PAPER_SOURCE_SIZE  # SYNTHIA-RAND-CITYSCAPES images are 760x1280, the paper's source size
CITYSCAPES_SIZE = (1024, 2048)  # full-resolution Cityscapes (the paper's target size is half of it)


def smooth_field(rng: np.random.Generator, size: tuple[int, int], octaves=((6, 10), (24, 40), (96, 160))) -> np.ndarray:
    """Smooth noise in [0, 1]: random grids at a few resolutions, upsampled bicubic and summed."""
    h, w = size
    out = np.zeros(size, np.float32)
    for k, (gh, gw) in enumerate(octaves):
        grid = rng.random((gh, gw), dtype=np.float32)
        out += cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC) / 2 ** k
    out -= out.min()
    return out / max(float(out.max()), 1e-6)


def plausible_rgb(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """An RGB image of smooth colour regions with a little sensor noise (compresses like a photo or render)."""
    rgb = np.stack([smooth_field(rng, size) for _ in range(3)], -1) * 230 + 10
    rgb += rng.normal(0, 2.0, rgb.shape).astype(np.float32)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def plausible_ids(rng: np.random.Generator, size: tuple[int, int], n_ids: int) -> np.ndarray:
    """Piecewise-constant class ids: a smooth field quantised into `n_ids` regions."""
    field = smooth_field(rng, size, octaves=((4, 8), (12, 20)))
    return np.minimum((field * n_ids).astype(np.int64), n_ids - 1)


def make_data(root: Path, n_images: int, n_val: int, seed: int = 0) -> tuple[Path, Path]:
    """SYNTHIA (raw layout) and Cityscapes at full resolution under `root`; reused when already complete."""
    synthia, cityscapes = root / 'synthia', root / 'cityscapes'
    done = root / f'.complete-{n_images}-{n_val}-{seed}'
    if done.is_file():
        return synthia, cityscapes
    rng = np.random.default_rng(seed)
    rows = np.linspace(0, 1, SYNTHIA_SIZE[0], dtype=np.float32)[:, None]
    for i in range(n_images):
        ids = plausible_ids(rng, SYNTHIA_SIZE, 23)  # SYNTHIA ids 0..22
        instances = (ids * 37 + plausible_ids(rng, SYNTHIA_SIZE, 50)) * (ids >= 8)  # instance ids on 'things'
        depth_cm = (500 + 30000 * (1 - rows) ** 3 + 3000 * smooth_field(rng, SYNTHIA_SIZE)).astype(np.uint16)
        write_synthia_sample(synthia, f'{i:07d}.png', plausible_rgb(rng, SYNTHIA_SIZE), ids.astype(np.uint16),
                             depth_cm, instance_ids=instances.astype(np.uint16), layout='raw')
    cities = ('aachen', 'bochum', 'bremen', 'cologne')
    for split, n in (('train', n_images), ('val', n_val)):
        for j in range(n):
            city = cities[j % len(cities)]
            labels = plausible_ids(rng, CITYSCAPES_SIZE, 34) if split == 'val' else None  # labelIds 0..33
            write_cityscapes_sample(cityscapes, split, city, f'{city}_{j:06d}_000019',
                                    plausible_rgb(rng, CITYSCAPES_SIZE), labels)
    done.touch()
    return synthia, cityscapes


def folder_mb(folder: Path, pattern: str) -> float:
    files = list(folder.rglob(pattern))
    return sum(f.stat().st_size for f in files) / max(len(files), 1) / 2 ** 20


def measure(synthia: Path, cityscapes: Path, workers: int, batches: int, seed: int = 0,
            batch_tfms: bool = True) -> dict:
    """Paired samples per second of `dls.train` (bs 1) over `batches` batches after the first. Without
    `batch_tfms` the batch transforms (to float, BGR, normalisation), which run on the GPU when training on one,
    are left out: what remains is the CPU's share (reading, resizing, tensors, collation)."""
    dls = dada_dataloaders(f'synthia:{synthia}', f'cityscapes:{cityscapes}', n_classes=16, bs=1,
                           source_size=PAPER_SOURCE_SIZE, target_size=PAPER_TARGET_SIZE, norm='reference',
                           num_workers=workers, seed=seed, device=torch.device('cpu'), pin_memory=False)
    dls.train.n = batches + 1
    if not batch_tfms:
        from fasttransform import Pipeline
        dls.train.after_batch = Pipeline([])
    it = iter(dls.train)
    start = time.perf_counter()
    b = next(it)
    first = time.perf_counter() - start
    shapes = [tuple(t.shape) for t in b]
    start, n = time.perf_counter(), 0
    for b in it:
        n += len(b[0])
    elapsed = time.perf_counter() - start
    return {'workers': workers, 'batch_tfms': batch_tfms, 'samples': n, 'seconds': elapsed, 'rate': n / elapsed,
            'first_s': first, 'shapes': shapes}


def profile_stages(synthia: Path, cityscapes: Path, repeats: int = 5) -> list[tuple[str, float]]:
    """Milliseconds per sample of each stage, on the first few samples (no workers)."""
    from PIL import Image

    from dada_fastai.data import DataItem, ReadDepth, ReadImage, ReadMask
    from dada_fastai.datasets import read_array
    src, trg = open_dataset(f'synthia:{synthia}'), open_dataset(f'cityscapes:{cityscapes}')
    s_items = [DataItem(src, s) for s in src.samples('train')[:repeats]]
    t_items = [DataItem(trg, s) for s in trg.samples('train')[:repeats]]

    def timed(fn, items):
        start = time.perf_counter()
        for it in items:
            fn(it)
        return (time.perf_counter() - start) / len(items) * 1e3

    big = np.asarray(trg.read_image(t_items[0].sample))
    th, tw = PAPER_TARGET_SIZE
    stages = [
        ('source image: PNG decode (OpenCV)', timed(lambda it: read_array(it.sample.image), s_items)),
        ('source label: 16-bit PNG decode', timed(lambda it: read_array(it.sample.label), s_items)),
        ('source label: decode + id mapping', timed(lambda it: it.ds.read_label(it.sample), s_items)),
        ('source depth: 16-bit PNG decode', timed(lambda it: read_array(it.sample.depth), s_items)),
        ('source depth: decode + 65536/(d+1)', timed(lambda it: it.ds.read_depth(it.sample), s_items)),
        ('target image: PNG decode 1024x2048', timed(lambda it: read_array(it.sample.image), t_items)),
        ('target image: bicubic resize (PIL)', timed(lambda it: Image.fromarray(big).resize((tw, th), Image.BICUBIC),
                                                     t_items)),
        ('ReadImage (source, no resize)', timed(ReadImage(PAPER_SOURCE_SIZE), s_items)),
        ('ReadMask (source)', timed(ReadMask(PAPER_SOURCE_SIZE), s_items)),
        ('ReadDepth (source)', timed(ReadDepth(PAPER_SOURCE_SIZE), s_items)),
        ('ReadImage (target, with resize)', timed(ReadImage(PAPER_TARGET_SIZE), t_items)),
    ]
    dls = dada_dataloaders(f'synthia:{synthia}', f'cityscapes:{cityscapes}', n_classes=16, bs=1, norm='reference',
                           device=torch.device('cpu'), pin_memory=False)
    ds, dl = dls.train.dataset, dls.train
    stages.append(('whole item (dataset item i)', timed(lambda i: ds[i], range(repeats))))
    items = [ds[i] for i in range(repeats)]
    stages.append(('item tfms (to tensors)', timed(dl.after_item, items)))
    tensors = [dl.after_item(x) for x in items]
    stages.append(('collate + batch tfms', timed(lambda x: dl.after_batch(dl.create_batch([x])), tensors)))
    return stages


def main(argv=None) -> float:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--n-images', type=int, default=40, help='source images and target train images (default 40)')
    p.add_argument('--n-val', type=int, default=4, help='target validation images (default 4)')
    p.add_argument('--batches', type=int, default=40, help='timed batches of bs 1 per setting (default 40)')
    p.add_argument('--workers', default='0,2', help='comma-separated DataLoader worker counts (default 0,2)')
    p.add_argument('--data', type=Path, default=None,
                   help='folder to keep or reuse the data in (default: a temp folder)')
    p.add_argument('--profile', action='store_true', help='also time each stage of one sample')
    p.add_argument('--cpu-share', action='store_true',
                   help='also time the pipeline without its batch transforms (run on the GPU when training on one)')
    args = p.parse_args(argv)
    from rich.console import Console
    from rich.table import Table
    console = Console()
    workers = [int(w) for w in str(args.workers).split(',') if w.strip()]
    with tempfile.TemporaryDirectory(prefix='dada_bench_') as tmp:
        root = args.data or Path(tmp)
        start = time.perf_counter()
        synthia, cityscapes = make_data(root, args.n_images, args.n_val)
        console.print(f'data in {root} ({time.perf_counter() - start:.1f} s): SYNTHIA {args.n_images} x '
                      f'{SYNTHIA_SIZE[1]}x{SYNTHIA_SIZE[0]} (RGB {folder_mb(synthia / "RGB", "*.png"):.2f} MB, '
                      f'labels {folder_mb(synthia / "GT", "*.png"):.2f} MB, depth '
                      f'{folder_mb(synthia / "Depth", "*.png"):.2f} MB per file), Cityscapes {args.n_images}+'
                      f'{args.n_val} x {CITYSCAPES_SIZE[1]}x{CITYSCAPES_SIZE[0]} '
                      f'({folder_mb(cityscapes / "leftImg8bit", "*.png"):.2f} MB per image)')
        results = [measure(synthia, cityscapes, w, args.batches) for w in workers]
        extra = [measure(synthia, cityscapes, w, args.batches, batch_tfms=False) for w in workers] if args.cpu_share \
            else []
        table = Table(title=f'paired training samples (source {SYNTHIA_SIZE[0]}x{SYNTHIA_SIZE[1]}, target '
                            f'{PAPER_TARGET_SIZE[0]}x{PAPER_TARGET_SIZE[1]}, bs 1, {os.cpu_count()} CPUs)')
        for col in ('workers', 'batch tfms', 'samples timed', 'seconds', 'samples/s', 'ms/sample', 'first batch s'):
            table.add_column(col, justify='right')
        for r in results + extra:
            table.add_row(str(r['workers']), 'on CPU' if r['batch_tfms'] else 'left out', str(r['samples']),
                          f"{r['seconds']:.2f}", f"{r['rate']:.2f}", f"{1e3 / r['rate']:.0f}", f"{r['first_s']:.2f}")
        console.print(table)
        console.print(f"batch shapes: {results[0]['shapes']}")
        if args.profile:
            prof = Table(title='one sample, stage by stage (no workers)')
            prof.add_column('stage')
            prof.add_column('ms', justify='right')
            for name, ms in profile_stages(synthia, cityscapes):
                prof.add_row(name, f'{ms:.1f}')
            console.print(prof)
    best = max(r['rate'] for r in results)  # the whole pipeline, batch transforms included
    print(f'pairs_per_second={best:.2f}')
    return best


if __name__ == '__main__':
    main()
