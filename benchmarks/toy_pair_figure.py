"""Draw the toy pair's picture for the README (docs/toy_pair.png): three source renders and three target photographs
with the first one's labels and inverse depth, in the 7-class protocol's colours.

    python benchmarks/toy_pair_figure.py            # writes docs/toy_pair.png
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from dada_fastai.data import depth_to_rgb
from dada_fastai.protocols import get_protocol
from dada_fastai.toy import ToyConfig, render_scene, scene_rng


def figure(cfg: ToyConfig = ToyConfig(), n: int = 3) -> np.ndarray:
    """One row per domain: `n` images, then the first one's labels and inverse depth."""
    palette = np.array(get_protocol(7).palette, np.uint8)
    rows = []
    for domain in ('source', 'target'):
        scenes = [render_scene(scene_rng(cfg.seed, domain, i), cfg, domain) for i in range(n)]
        _, labels, depth = scenes[0]
        rows.append(np.concatenate([rgb for rgb, _, _ in scenes] + [palette[labels], depth_to_rgb(1 / depth)], 1))
    return np.concatenate(rows, 0)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--out', default=str(Path(__file__).parents[1] / 'docs' / 'toy_pair.png'))
    args = p.parse_args(argv)
    Image.fromarray(figure()).save(args.out)
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
