"""Distributed training through accelerate: 2 CPU processes (gloo) end with identical weights."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

from e2e import SOURCE_SIZE, TARGET_SIZE, tiny_pair


def _free_port() -> int:
    """A TCP port nobody listens on now (a fixed one can still be held by an earlier run's processes)."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _launch(tmp_path: Path, extra_config: str = '', poison: str | None = None) -> tuple[dict, dict, Path]:
    """Train the tiny pair in 2 CPU processes; each rank's final weights and what it saw, and the run folder."""
    source, target = tiny_pair(tmp_path / 'data', n_source=4)
    cfg = tmp_path / 'tiny.yaml'
    cfg.write_text(f'source: "{source}"\ntarget: "{target}"\nclasses: 7\narch: test_resnet\npretrained: false\n'
                   f'iters: 4\nsource_size: {SOURCE_SIZE}\ntarget_size: {TARGET_SIZE}\nbs: 1\nndf: 8\nlr: 0.01\n'
                   'norm: imagenet\ncheckpoint_every: 2\nmethod: dada\ndevice: cpu\n' + extra_config)
    weights = tmp_path / 'weights'
    weights.mkdir()
    run = tmp_path / 'run'
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join([str(Path(__file__).parent), str(Path(__file__).parents[1]),
                                                         os.environ.get('PYTHONPATH', '')]),
           'OMP_NUM_THREADS': '1', 'MPLBACKEND': 'Agg'}
    cmd = [sys.executable, '-m', 'accelerate.commands.launch', '--multi_gpu', '--num_processes', '2', '--num_machines', '1',
           '--mixed_precision', 'no', '--dynamo_backend', 'no', '--main_process_port', str(_free_port()),
           str(Path(__file__).parent / 'dist_worker.py'), str(cfg), str(run), str(weights)] + ([poison] if poison else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    r0, r1 = (torch.load(weights / f'rank{r}.pt', weights_only=True) for r in (0, 1))
    for r, res in enumerate((r0, r1)):
        res['writes'] = json.loads((weights / f'rank{r}_writes.json').read_text())
    return r0, r1, run


def test_a_nan_in_one_process_is_skipped_by_all(tmp_path):
    """`--on-nan skip` with a NaN loss in rank 1 only: every process skips that iteration (the decision is
    shared), none hangs, and they end with identical, finite weights."""
    r0, r1, _ = _launch(tmp_path, 'on_nan: skip\n', poison='1:1')
    assert r0['skipped'] == r1['skipped'] == [2]
    for part in ('model', 'd'):
        for k in r0[part]:
            assert torch.equal(r0[part][k], r1[part][k]), f'{part}.{k} differs between ranks'
            assert torch.isfinite(r0[part][k].float()).all(), f'{part}.{k} is not finite'


def test_two_cpu_processes_end_with_identical_weights(tmp_path):
    r0, r1, run = _launch(tmp_path)
    for part in ('model', 'd'):
        for k in r0[part]:
            assert torch.equal(r0[part][k], r1[part][k]), f'{part}.{k} differs between ranks'
    assert r0['iters'] == r1['iters'] == 4
    # the data was split: each process trained on its own images
    assert len(r0['seen']) == len(r1['seen']) == 4 and r0['seen'] != r1['seen']
    # rank 0 alone wrote the run folder
    assert {p.name for p in run.iterdir()} >= {'config.yaml', 'last.pth', 'export.safetensors'}
    assert {'config.yaml', 'last.pth', 'export.safetensors'} <= set(r0['writes'])
    assert r1['writes'] == [], r1['writes']
    saved = torch.load(run / 'last.pth', weights_only=True)
    for k, v in saved['model'].items():  # the checkpoint holds the trained (unwrapped) weights
        assert torch.equal(v, r0['model'][k])


def test_two_cpu_processes_keep_the_same_mean_teacher(tmp_path):
    """Self-training under accelerate: every process ends with the same student, discriminator and teacher (whose
    BatchNorm statistics would otherwise follow each process's own batches)."""
    r0, r1, run = _launch(tmp_path, 'method: dada_st\nst_alpha: 0.5\n')
    assert r0['teacher'] and r0['iters'] == r1['iters'] == 4
    for part in ('model', 'd', 'teacher'):
        for k in r0[part]:
            assert torch.equal(r0[part][k], r1[part][k]), f'{part}.{k} differs between ranks'
    assert any(not torch.equal(r0['teacher'][k], r0['model'][k]) for k in r0['model'])  # a teacher, not a copy
    saved = torch.load(run / 'last.pth', weights_only=True)
    for k, v in saved['teacher']['model'].items():
        assert torch.equal(v, r0['teacher'][k])
