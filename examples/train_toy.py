"""Train DADA on the built-in synthetic-to-real toy pair from Python, then evaluate, draw and export.

    python examples/train_toy.py                 # about five minutes on a laptop CPU
    python examples/train_toy.py --iters 20      # a quick look
"""
import argparse

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

from dada_fastai.data import dada_dataloaders  # noqa: E402
from dada_fastai.inference import load_model  # noqa: E402
from dada_fastai.learner import dada_learner  # noqa: E402
from dada_fastai.toy import ToyConfig, toy_specs  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--method', default='dada', help='source_only, advent, dada, s3..s6')
    p.add_argument('--arch', default='resnet18', help='any timm model name')
    p.add_argument('--iters', type=int, default=300)
    p.add_argument('--size', default='64x128', help='HxW of the toy images')
    p.add_argument('--images', type=int, default=200, help='toy images per split')
    p.add_argument('--out', default='toy_results.png')
    args = p.parse_args()
    h, w = (int(v) for v in args.size.split('x'))
    source, target = toy_specs(cfg=ToyConfig(size=(h, w), n_source=args.images, n_target_train=args.images,
                                             n_target_val=max(args.images // 4, 2)))
    dls = dada_dataloaders(source, target, n_classes=7, source_size=(h, w), target_size=(h, w), bs=4, norm='imagenet')
    learn = dada_learner(dls, args.method, arch=args.arch, ndf=32, lr=2e-3)
    learn.fit_iters(args.iters, schedule='one_cycle')
    res = learn.evaluate()
    print({k: v if v is None else round(v, 1) for k, v in res['per_class'].items()}, 'mIoU', res['miou'])
    learn.show_results(max_n=3)
    plt.savefig(args.out, dpi=80, bbox_inches='tight')
    path = learn.export('toy_export.safetensors')
    print('exported', path, '->', load_model(path, device='cpu').protocol.classes)


if __name__ == '__main__':
    main()
