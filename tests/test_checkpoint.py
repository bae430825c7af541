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


@pytest.mark.parametrize('schedule, precision', [('poly', None), ('one_cycle', None), ('poly', 'fp16'),
                                                 ('one_cycle', 'bf16')])
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
