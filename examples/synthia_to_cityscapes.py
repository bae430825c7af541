"""The paper's main experiment from Python: DADA, SYNTHIA-RAND-CITYSCAPES -> Cityscapes, 16 classes.

    python examples/synthia_to_cityscapes.py /data/RAND_CITYSCAPES /data/cityscapes \
        --weights DeepLab_resnet_pretrained_imagenet.pth

The same as `dada-fastai train --config synthia2cityscapes_dada --source synthia:... --target cityscapes:...`.
"""
import argparse

from dada_fastai.data import dada_dataloaders
from dada_fastai.learner import dada_learner
from dada_fastai.model import REFERENCE_ARCH


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('synthia', help='SYNTHIA-RAND-CITYSCAPES folder (RGB/, GT/LABELS/, Depth/Depth/)')
    p.add_argument('cityscapes', help='Cityscapes folder (leftImg8bit/, gtFine/)')
    p.add_argument('--weights', default=None, help="the reference's ImageNet initialisation (.pth)")
    p.add_argument('--iters', type=int, default=90_000)
    p.add_argument('--mode', default='faithful', choices=['faithful', 'fast'])
    args = p.parse_args()
    dls = dada_dataloaders(f'synthia:{args.synthia}', f'cityscapes:{args.cityscapes}', n_classes=16,
                           norm='reference', num_workers=4)
    dls.train.show_batch()
    learn = dada_learner(dls, 'dada', arch=REFERENCE_ARCH, weights=args.weights, mode=args.mode)
    learn.fit_iters(args.iters)  # SGD 2.5e-4, poly 0.9, head 10x; discriminator Adam 1e-4
    print(learn.evaluate())
    learn.export('dada_synthia2cityscapes.safetensors')


if __name__ == '__main__':
    main()
