"""The bad-input catalogue: each case gets one clear line, a non-zero exit, and existing runs stay untouched."""
from __future__ import annotations

import hashlib
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dada_fastai.cli import main
from e2e import cli_args, tiny_options, tiny_pair
from layouts import make_cityscapes, make_synthia


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob('*')) if p.is_file()}


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    """Good data, a finished run, and a folder of bad things."""
    root = tmp_path_factory.mktemp('world')
    source, target = tiny_pair(root / 'data')
    run = root / 'run'
    assert main(['train', *cli_args(tiny_options(source, target, iters=2, out=str(run)))]) == 0
    return root, source, target, run


def _bad_synthia(root: Path, damage: str) -> str:
    src = make_synthia(root / damage, n=3, size=(36, 52))
    first = sorted((src / 'RGB').glob('*.png'))[0]
    if damage == 'truncated_image':
        first.write_bytes(first.read_bytes()[:len(first.read_bytes()) // 2])
    elif damage == 'corrupt_image':
        first.write_bytes(b'\x89PNG\r\n\x1a\n' + bytes(range(256)) * 4)
    elif damage == 'missing_label':
        (src / 'GT' / 'LABELS' / first.name).unlink()
    elif damage == 'missing_depth':
        (src / 'Depth' / 'Depth' / first.name).unlink()
    elif damage == 'size_mismatch':
        import cv2
        label = cv2.imread(str(src / 'GT' / 'LABELS' / first.name), cv2.IMREAD_UNCHANGED)
        cv2.imwrite(str(src / 'GT' / 'LABELS' / first.name), np.ascontiguousarray(label[:20, :30]))
    elif damage == 'empty_split':
        for f in (src / 'RGB').glob('*.png'):
            f.unlink()
    return f'synthia:{src}'


@pytest.mark.parametrize('damage, expected', [
    ('truncated_image', 'truncated'),
    ('corrupt_image', 'RGB'),
    ('missing_label', 'LABELS'),
    ('missing_depth', 'Depth'),
    ('size_mismatch', 'size'),
    ('empty_split', 'RGB'),
])
def test_damaged_source_data(world, damage, expected, capsys, tmp_path):
    root, _, target, run = world
    before = _snapshot(run)
    source = _bad_synthia(tmp_path, damage)
    with pytest.raises(SystemExit) as e:
        main(['train', *cli_args(tiny_options(source, target, iters=2, out=str(tmp_path / 'out')))])
    assert e.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith('dada-fastai: error:') and '\n' not in err and expected in err, err
    assert 'Traceback' not in err and 'Exception occured' not in err
    assert _snapshot(run) == before
    assert not (tmp_path / 'out' / 'last.pth').exists()


def _bad_checkpoint(folder: Path, kind: str, run: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / 'last.pth'
    if kind == 'zero_byte':
        path.write_bytes(b'')
    elif kind == 'truncated':
        data = (run / 'last.pth').read_bytes()
        path.write_bytes(data[:len(data) // 3])
    elif kind == 'pickle':
        with path.open('wb') as f:
            pickle.dump({'format': 'dada-fastai-checkpoint-v1', 'payload': Path('/')}, f)
    elif kind == 'not_ours':
        torch.save({'weights': torch.ones(3)}, path)
    return path


@pytest.mark.parametrize('kind, expected', [('zero_byte', 'empty'), ('truncated', 'truncated'),
                                            ('pickle', 'refusing'), ('not_ours', 'not a dada-fastai')])
def test_bad_checkpoints(world, kind, expected, capsys, tmp_path):
    root, source, target, run = world
    before = _snapshot(run)
    path = _bad_checkpoint(tmp_path / 'ck', kind, run)
    for args in (['evaluate', str(path), '--target', target], ['predict', str(path), str(root / 'data'), '--out',
                                                                  str(tmp_path / 'pred')]):
        with pytest.raises(SystemExit) as e:
            main(args)
        assert e.value.code == 1
        err = capsys.readouterr().err.strip()
        assert '\n' not in err and expected in err, err
    assert _snapshot(run) == before


def test_resume_with_a_damaged_checkpoint_keeps_the_run(world, capsys, tmp_path):
    _, _, _, run = world
    copy = tmp_path / 'run'
    copy.mkdir()
    for f in run.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    (copy / 'last.pth').write_bytes((copy / 'last.pth').read_bytes()[:1000])
    before = _snapshot(copy)
    with pytest.raises(SystemExit):
        main(['train', '--resume', str(copy)])
    assert 'truncated' in capsys.readouterr().err
    assert _snapshot(copy) == before


def test_checkpoint_for_another_class_count(world, capsys):
    _, _, target, run = world
    with pytest.raises(SystemExit):
        main(['evaluate', str(run), '--classes', '16', '--target', target])
    err = capsys.readouterr().err
    assert '7 classes' in err and '16' in err


@pytest.mark.parametrize('text, expected', [
    ('iters: [1, 2\n', 'bad YAML'),
    ('- just\n- a list\n', 'mapping'),
    ('itres: 5\n', "unknown option 'itres'"),
    ('method: dadaa\n', 'valid: source_only'),
    ('iters: -3\n', 'positive'),
])
def test_bad_config_files(text, expected, capsys, tmp_path):
    cfg = tmp_path / 'bad.yaml'
    cfg.write_text(text)
    with pytest.raises(SystemExit) as e:
        main(['train', '--config', str(cfg), '--out', str(tmp_path / 'out')])
    assert e.value.code == 1
    err = capsys.readouterr().err.strip()
    assert '\n' not in err and expected in err, err
    assert not (tmp_path / 'out').exists()


def test_bad_folder_dataset_yaml(world, capsys, tmp_path):
    _, _, target, _ = world
    bad = tmp_path / 'mine'
    (bad / 'images' / 'train').mkdir(parents=True)
    (bad / 'dataset.yaml').write_text('classes: [road\n')
    with pytest.raises(SystemExit):
        main(['data-report', '--source', f'folder:{bad}', '--target', target, '--classes', '7'])
    err = capsys.readouterr().err.strip()
    assert 'dataset.yaml' in err and '\n' not in err


def test_wrong_paths_and_unknown_options(capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        main(['data-report', '--source', 'cityscapes:/no/such/dir', '--target', 'cityscapes:/no/such/dir'])
    assert e.value.code == 1 and '/no/such/dir' in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(['train', '--no-such-option'])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main(['train', '--classes', '19'])
    assert e.value.code == 2 and '16' in capsys.readouterr().err


def test_a_truncated_target_image_in_a_worker_process(world, capsys, tmp_path):
    """An error inside a DataLoader worker still reaches the user as the reader's one line."""
    _, source, _, _ = world
    trg = make_cityscapes(tmp_path / 'cs', n_train=3, n_val=2, size=(40, 72))
    image = sorted((trg / 'leftImg8bit' / 'train').rglob('*.png'))[0]
    image.write_bytes(image.read_bytes()[:200])
    with pytest.raises(SystemExit):
        main(['train', *cli_args(tiny_options(source, f'cityscapes:{trg}', iters=3, out=str(tmp_path / 'o'))),
              '--workers', '1'])
    err = capsys.readouterr().err.strip()
    assert '\n' not in err and 'truncated' in err and str(image) in err and 'Original Traceback' not in err, err


def test_console_script_bad_input_exit_code():
    proc = subprocess.run([sys.executable, '-m', 'dada_fastai.cli', 'evaluate', '/no/such/run.pth'],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert [line for line in proc.stderr.splitlines() if line.strip()] == [
        'dada-fastai: error: checkpoint not found: /no/such/run.pth']
