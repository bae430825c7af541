"""Tiny datasets in the real layouts and tiny training settings shared by the end-to-end tests."""
from __future__ import annotations

from pathlib import Path

import torch
from fastai.callback.core import Callback
from fastai.torch_core import rank_distrib

from dada_fastai.callbacks import DADATrainer
from dada_fastai.checkpoint import save_export
from dada_fastai.config import resolve_config
from dada_fastai.meta import RunMeta
from dada_fastai.methods import method_config
from dada_fastai.model import DADA
from dada_fastai.run_folder import RunFolder
from layouts import make_cityscapes, make_synthia

SOURCE_SIZE, TARGET_SIZE = '32x48', '32x64'  # the discriminator needs at least 32 pixels a side


def tiny_pair(root: Path, n_source: int = 4, n_target: int = 3, n_val: int = 2) -> tuple[str, str]:
    """('synthia:DIR', 'cityscapes:DIR') of tiny datasets in the published layouts."""
    src = make_synthia(root / 'synthia', n=n_source, size=(36, 52))
    trg = make_cityscapes(root / 'cityscapes', n_train=n_target, n_val=n_val, size=(40, 72))
    return f'synthia:{src}', f'cityscapes:{trg}'


def tiny_options(source: str, target: str, **overrides) -> dict:
    """Training options for a few-second run on 2 CPU cores."""
    opts = dict(source=source, target=target, classes=7, arch='test_resnet', pretrained=False, iters=4,
                source_size=SOURCE_SIZE, target_size=TARGET_SIZE, bs=2, ndf=8, lr=1e-2, norm='imagenet',
                checkpoint_every=2, eval_every=2)
    opts.update(overrides)
    return opts


def make_run(folder: Path, source: str, target: str, classes: int = 16, method: str = 'dada', seed: int = 0,
             **options) -> Path:
    """A run folder as `train` leaves it (config.yaml and export.safetensors) for a tiny untrained network whose
    classifier is scaled up and centred (each class's mean score on noise images 0), so that its predictions vary
    from pixel to pixel."""
    cfg = resolve_config(None, source=source, target=target, classes=classes, method=method, arch='test_resnet',
                         pretrained=False, source_size='32x48', target_size='32x64', norm='imagenet', out=str(folder),
                         **options)
    RunFolder(folder).write_config(cfg.to_dict())
    parts = method_config(method)
    torch.manual_seed(seed)
    model = DADA(classes, arch='test_resnet', depth_block=parts.depth_block, feature_fusion=parts.feature_fusion)
    model.eval()
    with torch.no_grad():
        for conv in model.classifier.convs:
            conv.weight.mul_(40)
        seg, _ = model(torch.randn(4, 3, 32, 64))
        model.classifier.convs[0].bias.sub_(seg.mean((0, 2, 3)))
    meta = RunMeta(classes, 'test_resnet', parts.depth_block, parts.feature_fusion, norm='imagenet',
                   target_size=(32, 64))
    save_export(model, meta, RunFolder(folder).export)
    return folder


def built_stages(monkeypatch, caller=None) -> list:
    """The configurations `build_run_learner` builds from here on when `caller` (a module that imported it; default
    `dada_fastai.runs`, whose warm start builds its stage through it) calls it."""
    if caller is None:
        import dada_fastai.runs as caller
    stages, build = [], caller.build_run_learner

    def recording(cfg, *args, **kwargs):
        stages.append(cfg)
        return build(cfg, *args, **kwargs)
    monkeypatch.setattr(caller, 'build_run_learner', recording)
    return stages


def cli_args(opts: dict) -> list[str]:
    """Options as `dada-fastai train` flags."""
    args = []
    for k, v in opts.items():
        flag = '--' + k.replace('_', '-')
        if isinstance(v, bool):
            args.append(flag if v else '--no-' + k.replace('_', '-'))
        else:
            args += [flag, str(v)]
    return args


class Crash(Callback):
    """Interrupt training (a preempted node: KeyboardInterrupt) after `at` iterations."""
    order = 95

    def __init__(self, at: int):
        self.at = at

    def after_batch(self):
        if self.training and self.train_iter == self.at:
            raise KeyboardInterrupt


class Poison(Callback):
    """A NaN loss at iteration `at` (counted from 0), as a bad batch would give; with `rank`, in that process only."""
    order = DADATrainer.order + 1  # after DADATrainer's after_loss has recorded the iteration's loss terms

    def __init__(self, at: int = 1, rank: int | None = None):
        self.at, self.rank = at, rank

    def after_loss(self):
        if self.training and self.train_iter == self.at and self.rank in (None, rank_distrib()):
            self.learn.loss_grad = self.loss_grad * float('nan')
            self.learn.loss = self.loss * float('nan')


def fails_in_one_line(capsys, args: list[str], says: str, code: int = 1) -> None:
    """`dada-fastai ARGS` exits with `code` and one line on stderr, `dada-fastai: error: ...`, that contains `says`."""
    import pytest
    from dada_fastai.cli import main
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(args)
    err = capsys.readouterr().err.strip()
    assert e.value.code == code and err.startswith('dada-fastai: error:') and '\n' not in err, err
    assert says in err, err
