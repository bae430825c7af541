"""Fuzz of what a run leaves behind: `last.pth`, `prev.pth`, `export.safetensors` and `config.yaml` damaged in drawn
ways (truncated at a drawn offset, drawn bytes, empty, another class count, another architecture, a key missing), then
`train --resume`, `evaluate` and `predict` on the run. Each ends in one line and a non-zero exit, or (evaluate and
predict, when the damaged file is not one they read) works; the run folder is never changed. `EXAMPLES` damaged
runs; the number is printed."""
from __future__ import annotations

import io
import json
import shutil
import time
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, note, settings, strategies as st

from dada_fastai import runs
from dada_fastai.cli import main
from dada_fastai.config import resolve_config
from e2e import tiny_options, tiny_pair

EXAMPLES = 30
FILES = ('last.pth', 'prev.pth', 'export.safetensors', 'config.yaml')
DAMAGES = ('truncated', 'random_bytes', 'empty', 'other_classes', 'other_arch', 'key_missing')


@pytest.fixture(scope='module')
def finished(tmp_path_factory):
    """A finished run (last.pth at iteration 2, prev.pth at 1, the export, config.yaml) and its data."""
    root = tmp_path_factory.mktemp('ck')
    source, target = tiny_pair(root / 'data', n_source=2, n_target=2, n_val=1)
    run = root / 'run'
    runs.train(resolve_config(None, out=str(run), **tiny_options(source, target, iters=2, checkpoint_every=1)))
    image = sorted((Path(target.split(':', 1)[1]) / 'leftImg8bit' / 'val').rglob('*.png'))[0]
    return run, image


def _weight_keys(state_dict: dict) -> list[str]:
    """The keys a model cannot do without (BatchNorm's batch counter is filled in when missing)."""
    return sorted(k for k in state_dict if not k.endswith('num_batches_tracked'))


def _damage_pth(path: Path, kind: str, draw) -> None:
    state = torch.load(path, map_location='cpu', weights_only=True)
    meta, config = json.loads(state['meta']), json.loads(state['config'])
    if kind == 'other_classes':
        meta['n_classes'], config['classes'] = 16, 16
    elif kind == 'other_arch':
        meta['arch'], config['arch'] = 'resnet18', 'resnet18'
    state['meta'], state['config'] = json.dumps(meta), json.dumps(config)
    if kind == 'key_missing':
        key = draw(st.sampled_from(['model', 'rng', 'meta', 'iteration', 'a weight']))
        if key == 'a weight':
            del state['model'][draw(st.sampled_from(_weight_keys(state['model'])))]
        else:
            del state[key]
    buf = io.BytesIO()
    torch.save(state, buf)
    path.write_bytes(buf.getvalue())


def _damage_export(path: Path, kind: str, draw) -> None:
    from safetensors import safe_open
    from safetensors.torch import save
    with safe_open(str(path), 'pt') as f:
        head, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    meta = json.loads(head['meta'])
    if kind == 'other_classes':
        meta['n_classes'] = 16
    elif kind == 'other_arch':
        meta['arch'] = 'resnet18'
    elif draw(st.booleans()):
        del tensors[draw(st.sampled_from(_weight_keys(tensors)))]
    else:
        del meta[draw(st.sampled_from(['arch', 'n_classes', 'depth_block', 'feature_fusion']))]
    head['meta'] = json.dumps(meta)
    path.write_bytes(save(tensors, metadata=head))


def _damage_config(path: Path, kind: str, draw) -> None:
    cfg = yaml.safe_load(path.read_text())
    if kind == 'other_classes':
        cfg['classes'] = 16
    elif kind == 'other_arch':
        cfg['arch'] = 'resnet18'
    else:
        del cfg[draw(st.sampled_from(['iters', 'lr', 'classes', 'arch', 'source', 'method']))]
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))


def damage(path: Path, kind: str, draw) -> None:
    data = path.read_bytes()
    if kind == 'truncated':  # config.yaml: within its first half (cutting only trailing defaults changes nothing)
        high = len(data) // 2 if path.suffix == '.yaml' else len(data) - 1
        path.write_bytes(data[:draw(st.integers(1, high))])
    elif kind == 'random_bytes':
        path.write_bytes(draw(st.binary(min_size=1, max_size=200)))
    elif kind == 'empty':
        path.write_bytes(b'')
    else:
        {'.pth': _damage_pth, '.safetensors': _damage_export, '.yaml': _damage_config}[path.suffix](path, kind, draw)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob('*')) if p.is_file()}


def test_damaged_run_files_cost_one_line_and_change_nothing(finished, tmp_path, monkeypatch, capsys):
    run, image = finished
    outcomes, started = {}, time.time()

    def reached(*args, **kwargs):
        raise AssertionError('a damaged run was resumed')
    monkeypatch.setattr(runs, '_fit', reached)
    monkeypatch.setattr(runs, '_finish', reached)

    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(name=st.sampled_from(FILES), kind=st.sampled_from(DAMAGES), data=st.data())
    def one(name, kind, data):
        copy = tmp_path / 'run'
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(run, copy)
        damage(copy / name, kind, data.draw)
        if name == 'prev.pth':  # prev.pth is read only when last.pth cannot be
            (copy / 'last.pth').write_bytes((copy / 'last.pth').read_bytes()[:1000])
        if name == 'last.pth':  # with a good prev.pth, resuming from it is right (tests/test_checkpoint.py)
            (copy / 'prev.pth').write_bytes(b'')
        note(f'{name}: {kind}')
        before = _snapshot(copy)
        model = str(copy / 'last.pth') if name in ('last.pth', 'prev.pth') else str(copy)
        commands = [['evaluate', model, '--json'], ['predict', model, str(image), '--out', str(tmp_path / 'pred')]]
        if name != 'export.safetensors':  # resuming reads no export (and writes a new one at its end)
            commands.append(['train', '--resume', str(copy)])
        for args in commands:
            capsys.readouterr()
            try:
                code = main(args)
            except SystemExit as e:
                code = e.code
            err = capsys.readouterr().err.strip()
            key = f'{args[0]}: {"refused" if code else "worked"}'
            outcomes[key] = outcomes.get(key, 0) + 1
            if code:
                assert err.startswith('dada-fastai: error:') and '\n' not in err, (args, err)
            else:  # only evaluate and predict, on a config.yaml whose damage does not touch what they read from it
                assert args[0] != 'train' and name == 'config.yaml', args
            assert _snapshot(copy) == before, args
            shutil.rmtree(tmp_path / 'pred', ignore_errors=True)
    one()
    with capsys.disabled():
        print(f'\ncheckpoint fuzz: {EXAMPLES} damaged runs, {sum(outcomes.values())} commands ({outcomes}) in '
              f'{time.time() - started:.1f} s')
