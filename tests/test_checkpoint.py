"""Checkpoints: exact resume, atomic writes, safe loading, clear errors; the safetensors export."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from fastai.callback.core import Callback

from dada_fastai.checkpoint import (CheckpointError, atomic_write_bytes, export_inference, load_checkpoint,
                                    load_inference_file)
from dada_fastai.config import resolve_config
from dada_fastai.inference import load_model
from dada_fastai.runs import RunError, resume, train
from e2e import Crash as _Crash, tiny_options, tiny_pair


@pytest.fixture(scope='module')
def pair(tmp_path_factory):
    return tiny_pair(tmp_path_factory.mktemp('data'))


def _weights(run_dir: Path) -> dict:
    state = load_checkpoint(run_dir / 'last.pth')
    return {**{f'model.{k}': v for k, v in state['model'].items()},
            **{f'd.{k}': v for k, v in state['dada']['discriminators'].items()}}


class _LowerScale(Callback):
    """Move fp16's loss scale off its initial value at the first iteration, so that a resume that forgot it
    would compute differently."""
    order = 95

    def after_batch(self):
        if self.training and self.train_iter == 1:
            self.learn.scaler.update(new_scale=256.)


@pytest.mark.parametrize('schedule, precision', [('poly', None), ('one_cycle', None), ('flat_cos', None),
                                                 ('constant', None), ('poly', 'fp16'), ('one_cycle', 'bf16')])
def test_resume_is_bit_identical(pair, tmp_path, schedule, precision):
    fast = precision == 'fp16'  # fp16: the gradient scaler's state must survive the resume too
    extra = dict(mode='fast', precision=precision) if precision else {}
    opts = tiny_options(*pair, iters=6, checkpoint_every=3, eval_every=2, schedule=schedule, **extra)
    cbs = [_LowerScale()] if fast else []
    full = train(resolve_config(None, out=str(tmp_path / 'full'), **opts), cbs=cbs)
    with pytest.raises(KeyboardInterrupt):
        train(resolve_config(None, out=str(tmp_path / 'cut'), **opts), cbs=cbs + [_Crash(4)])
    assert load_checkpoint(tmp_path / 'cut')['iteration'] == 3  # the crash lost iteration 4, not the run
    if fast:
        assert load_checkpoint(tmp_path / 'cut')['scaler']['scale'] == 256.
    resumed = resume(tmp_path / 'cut')
    if fast:  # the resumed run went on with the saved scale and growth tracker, as the uninterrupted one did
        assert load_checkpoint(tmp_path / 'cut')['scaler'] == load_checkpoint(tmp_path / 'full')['scaler']
    a, b = _weights(tmp_path / 'full'), _weights(tmp_path / 'cut')
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f'{k} differs after resume'
    assert resumed['iters'] == full['iters'] == 6
    assert resumed['miou'] == full['miou']
    opt_a, opt_b = load_checkpoint(tmp_path / 'full')['opt'], load_checkpoint(tmp_path / 'cut')['opt']
    assert all(torch.equal(opt_a['state'][i]['momentum_buffer'], opt_b['state'][i]['momentum_buffer'])
               for i in opt_a['state'])


def test_run_folder_is_never_reused(pair, tmp_path):
    opts = tiny_options(*pair, iters=2)
    train(resolve_config(None, out=str(tmp_path / 'run'), **opts))
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / 'run').iterdir()}
    with pytest.raises(RunError, match='--resume'):
        train(resolve_config(None, out=str(tmp_path / 'run'), **opts))
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / 'run').iterdir()} == before


def test_atomic_write_keeps_previous_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / 'last.pth'
    atomic_write_bytes(target, b'good')

    def disk_full(*args, **kwargs):
        raise OSError(28, 'No space left on device')
    monkeypatch.setattr(os, 'fsync', disk_full)
    with pytest.raises(OSError):
        atomic_write_bytes(target, b'new data that does not fit')
    assert target.read_bytes() == b'good'
    assert [p.name for p in tmp_path.iterdir()] == ['last.pth']  # no temporary file left behind


def test_bad_checkpoints_are_refused_with_one_line(tmp_path):
    empty = tmp_path / 'empty.pth'
    empty.write_bytes(b'')
    with pytest.raises(CheckpointError, match='empty'):
        load_checkpoint(empty)
    good = tmp_path / 'good.pth'
    torch.save({'format': 'dada-fastai-checkpoint-v1', 'model': {'w': torch.ones(3)}}, good)
    cut = tmp_path / 'cut.pth'
    cut.write_bytes(good.read_bytes()[:len(good.read_bytes()) // 2])
    with pytest.raises(CheckpointError, match='truncated') as e:
        load_checkpoint(cut)
    assert '\n' not in str(e.value) and str(cut) in str(e.value)
    evil = tmp_path / 'evil.pth'
    with evil.open('wb') as f:
        pickle.dump({'format': 'dada-fastai-checkpoint-v1', 'x': _Payload()}, f)
    with pytest.raises(CheckpointError, match='refusing') as e:
        load_checkpoint(evil)
    assert not _Payload.ran
    with pytest.raises(CheckpointError, match='not found'):
        load_checkpoint(tmp_path / 'missing.pth')
    other = tmp_path / 'other.pth'
    torch.save({'weights': torch.ones(2)}, other)
    with pytest.raises(CheckpointError, match='not a dada-fastai'):
        load_checkpoint(other)


class _Payload:
    """An object whose unpickling would run code."""
    ran = False

    def __reduce__(self):
        return (_Payload._run, ())

    @staticmethod
    def _run():
        _Payload.ran = True
        return 'ran'


def test_export_round_trip_and_wrong_model(pair, tmp_path):
    res = train(resolve_config(None, out=str(tmp_path / 'run'), **tiny_options(*pair, iters=2)))
    sd, meta = load_inference_file(tmp_path / 'run' / 'export.safetensors')
    assert meta['n_classes'] == 7 and meta['arch'] == 'test_resnet'
    ckpt = load_checkpoint(tmp_path / 'run' / 'last.pth')
    for k, v in ckpt['model'].items():
        assert torch.equal(sd[k], v)
    lm = load_model(res['run_dir'], device='cpu')
    assert lm.protocol.n_classes == 7
    bad = tmp_path / 'bad.safetensors'
    bad.write_bytes((tmp_path / 'run' / 'export.safetensors').read_bytes()[:100])
    with pytest.raises(CheckpointError, match='bad.safetensors'):
        load_inference_file(bad)


def test_checkpoint_for_another_class_count_is_refused(pair, tmp_path):
    train(resolve_config(None, out=str(tmp_path / 'run7'), **tiny_options(*pair, iters=2)))
    from dada_fastai.checkpoint import restore_training_state
    from dada_fastai.runs import build_dataloaders, build_learner
    cfg16 = resolve_config(None, **tiny_options(*pair, classes=16))
    learn = build_learner(cfg16, build_dataloaders(cfg16))
    with pytest.raises(CheckpointError, match='does not fit'):
        restore_training_state(learn, load_checkpoint(tmp_path / 'run7'), tmp_path / 'run7' / 'last.pth')


def test_export_uses_safetensors(pair, tmp_path):
    from dada_fastai.runs import build_dataloaders, build_learner
    cfg = resolve_config(None, **tiny_options(*pair))
    learn = build_learner(cfg, build_dataloaders(cfg))
    path = export_inference(learn, tmp_path / 'm.safetensors')
    assert path.read_bytes()[8:9] == b'{'  # a safetensors header, no pickle


def test_run_meta_is_one_frozen_object_written_and_read_back(pair, tmp_path):
    """`learn.meta` describes the model once; checkpoints and exports write it, `load_model` reads it back; files
    whose metadata lacks the later keys still load."""
    import dataclasses
    import json
    from safetensors.torch import save
    from dada_fastai.checkpoint import save_checkpoint
    from dada_fastai.data import parse_size
    from dada_fastai.learner import method_config
    from dada_fastai.meta import RunMeta
    from dada_fastai.runs import build_dataloaders, build_learner
    cfg = resolve_config(None, **tiny_options(*pair, method='s4'))
    learn = build_learner(cfg, build_dataloaders(cfg))
    meta = learn.meta
    assert isinstance(meta, RunMeta) and meta.arch == 'test_resnet' and meta.n_classes == 7
    assert meta.method == method_config('s4') and (meta.depth_block, meta.feature_fusion, meta.adapt) == (True, False, ('depth',))
    assert meta.norm == 'imagenet' and meta.fit == 'stretch' and meta.target_size == parse_size(cfg.target_size)
    assert meta.source_size == parse_size(cfg.source_size) and meta.config == cfg.to_dict()
    with pytest.raises(dataclasses.FrozenInstanceError):
        meta.arch = 'resnet18'
    # the names earlier versions kept, read from it
    assert learn.protocol is meta.protocol and learn.run_config == cfg.to_dict()
    assert learn.dada_config['method'] == meta.method and learn.dada_config['arch'] == 'test_resnet'
    state = torch.load(save_checkpoint(learn, tmp_path / 'last.pth', 0), weights_only=True)
    assert json.loads(state['meta']) == meta.to_dict() and json.loads(state['config'])['method'] == 's4'
    export = export_inference(learn, tmp_path / 'm.safetensors')
    assert load_inference_file(export)[1] == meta.to_dict()
    lm = load_model(export, device='cpu')
    assert lm.meta.to_dict() == meta.to_dict() and lm.meta['fit'] == meta.fit and lm.run_config == {}
    # metadata as the first exports wrote it (no adapt, norm, layers, fit or target size): defaults fill them in
    old = tmp_path / 'old.safetensors'
    first = {k: meta.to_dict()[k] for k in ('arch', 'n_classes', 'depth_block', 'feature_fusion')}
    old.write_bytes(save({k: v.contiguous() for k, v in learn.model.state_dict().items()},
                         metadata={'format': 'dada-fastai-export-v1', 'meta': json.dumps(first)}))
    lm = load_model(old, device='cpu')
    assert (lm.meta.n_classes, lm.meta.fit, lm.meta.target_size, lm.meta.norm) == (7, 'stretch', None, None)


@pytest.fixture(scope='module')
def rotated_run(pair, tmp_path_factory):
    """A run of 3 iterations with a checkpoint at each (last.pth and prev.pth), every rename and link of the
    checkpoint writes observed: `last.pth`, once written, must exist after each of them."""
    import unittest.mock
    run_dir = tmp_path_factory.mktemp('rot') / 'run'
    gaps, real_replace, real_link = [], os.replace, os.link

    def watched(real):
        def call(*args, **kwargs):
            had = (run_dir / 'last.pth').exists()
            real(*args, **kwargs)
            if had and not (run_dir / 'last.pth').exists():
                gaps.append(args)
        return call
    with unittest.mock.patch.object(os, 'replace', watched(real_replace)), \
            unittest.mock.patch.object(os, 'link', watched(real_link)):
        train(resolve_config(None, out=str(run_dir), **tiny_options(*pair, iters=3, checkpoint_every=1)))
    return run_dir, gaps


def _copy(run_dir: Path, to: Path) -> Path:
    to.mkdir()
    for f in run_dir.iterdir():
        if f.is_file():
            (to / f.name).write_bytes(f.read_bytes())
    return to


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def test_checkpoint_rotation_never_leaves_the_run_without_last(rotated_run):
    run_dir, gaps = rotated_run
    assert not gaps, f'last.pth was missing after {gaps[0]}'
    assert load_checkpoint(run_dir / 'last.pth')['iteration'] == 3
    assert load_checkpoint(run_dir / 'prev.pth')['iteration'] == 2
    assert not [p.name for p in run_dir.iterdir() if p.name.startswith('.')]  # no temporary file left


def test_truncated_last_falls_back_to_prev_with_a_warning(rotated_run, tmp_path):
    run = _copy(rotated_run[0], tmp_path / 'run')
    prev = (run / 'prev.pth').read_bytes()
    (run / 'last.pth').write_bytes((run / 'last.pth').read_bytes()[:1000])
    with pytest.warns(UserWarning) as caught:
        res = resume(run, iters=4)
    text = ' '.join(str(w.message) for w in caught)
    assert str(run / 'last.pth') in text and str(run / 'prev.pth') in text
    assert res['iters'] == 4 and load_checkpoint(run / 'last.pth')['iteration'] == 4
    assert load_checkpoint(run / 'prev.pth')['iteration'] == 3  # written after the resume, from iteration 2 on
    assert prev != (run / 'prev.pth').read_bytes()


def test_both_checkpoints_damaged_is_one_line_and_nothing_changes(rotated_run, tmp_path, capsys):
    from dada_fastai.cli import main
    run = _copy(rotated_run[0], tmp_path / 'run')
    (run / 'last.pth').write_bytes((run / 'last.pth').read_bytes()[:1000])
    (run / 'prev.pth').write_bytes(b'')
    before = _files(run)
    with pytest.raises(SystemExit):
        main(['train', '--resume', str(run)])
    err = capsys.readouterr().err.strip()
    assert '\n' not in err and str(run / 'last.pth') in err and str(run / 'prev.pth') in err, err
    assert _files(run) == before


def test_resume_refuses_an_option_it_cannot_apply(rotated_run, tmp_path, capsys):
    """`--resume RUN --lr 5` used to train on at the run's rate without a word."""
    from dada_fastai.cli import main
    run = _copy(rotated_run[0], tmp_path / 'run')
    before = _files(run)
    for args, words in ((['--lr', '5'], '--lr 5.0 cannot change when resuming'),
                        (['--method', 'advent'], '--method advent cannot change when resuming'),
                        (['--config', 'ablation_s6'], '--config does not apply to --resume'),
                        (['--seed', '-1'], '--seed must be an integer from 0 to 4294967295')):
        with pytest.raises(SystemExit) as e:
            main(['train', '--resume', str(run), *args])
        err = capsys.readouterr().err.strip()
        assert e.value.code == 1 and '\n' not in err and words in err, err
    assert _files(run) == before


def test_resume_applies_what_may_change_and_saves_it(rotated_run, tmp_path):
    import yaml
    run = _copy(rotated_run[0], tmp_path / 'run')
    lr = yaml.safe_load((run / 'config.yaml').read_text())['lr']
    res = resume(run, iters=5, checkpoint_every=0, lr=lr, val_max=1)  # the run's own lr: nothing to refuse
    cfg = yaml.safe_load((run / 'config.yaml').read_text())
    assert res['iters'] == 5 and (cfg['iters'], cfg['checkpoint_every'], cfg['val_max']) == (5, 0, 1)
    assert load_checkpoint(run / 'prev.pth')['iteration'] == 3  # checkpoint_every 0: only the final one


def test_config_yaml_that_does_not_match_the_checkpoint_is_refused(rotated_run, tmp_path):
    import yaml
    from dada_fastai.config import ConfigError
    run = _copy(rotated_run[0], tmp_path / 'run')
    cfg = yaml.safe_load((run / 'config.yaml').read_text())
    (run / 'config.yaml').write_text(yaml.safe_dump({**cfg, 'classes': 16}))
    with pytest.raises(CheckpointError, match="classes 7 but .*config.yaml says 16"):
        resume(run)
    del cfg['lr']
    (run / 'config.yaml').write_text(yaml.safe_dump(cfg))
    with pytest.raises(CheckpointError, match="config.yaml lacks 'lr'"):
        resume(run)
    (run / 'config.yaml').write_text(yaml.safe_dump({**cfg, 'lr': 'fast'}))
    with pytest.raises(ConfigError, match='lr must be a float in'):
        resume(run)
