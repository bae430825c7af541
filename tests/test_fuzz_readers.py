"""Fuzz of the dataset readers: in each layout (SYNTHIA as published and re-encoded, Cityscapes, Vistas, a folder
dataset), one file damaged in a generated way (truncated at a drawn offset, drawn bytes, empty, a folder or a link
loop in its place, another bit depth or channel count, another size than its image, label ids out of range, depth
all 0, all 65535 or all NaN). Every item then reads correctly (out-of-range ids as ignore) or fails with one line
naming the damaged file, in the main process and in a DataLoader worker alike; `data-report` lists every damaged
file of a run at once. `EXAMPLES` damaged datasets; the number is printed."""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, note, settings, strategies as st

from dada_fastai.cli import _message, main
from dada_fastai.datasets import DatasetError, open_dataset
from layouts import make_cityscapes, make_folder, make_synthia, make_vistas

EXAMPLES = 200
SIZE = (8, 12)

LAYOUTS = {  # name: (KIND, writer, split, image/label/depth folders below the root, classes)
    'synthia_raw': ('synthia', lambda r: make_synthia(r, n=2, size=SIZE), 'train',
                    {'image': 'RGB', 'label': 'GT/LABELS', 'depth': 'Depth/Depth'}, 16),
    'synthia_parsed': ('synthia', lambda r: make_synthia(r, n=2, size=SIZE, layout='parsed'), 'train',
                       {'image': 'RGB', 'label': 'parsed_LABELS', 'depth': 'Depth'}, 16),
    'cityscapes': ('cityscapes', lambda r: make_cityscapes(r, n_train=1, n_val=2, size=SIZE, disparity=True), 'val',
                   {'image': 'leftImg8bit/val', 'label': 'gtFine/val', 'depth': 'disparity/val'}, 16),
    'vistas': ('vistas', lambda r: make_vistas(r, n_train=1, n_val=2, size=SIZE), 'val',
               {'image': 'validation/images', 'label': 'validation/labels'}, 7),
    'folder_png': ('folder', lambda r: make_folder(r, n_train=1, n_val=2, size=SIZE), 'val',
                   {'image': 'images/val', 'label': 'labels/val', 'depth': 'depth/val'}, 16),
    'folder_npy': ('folder', lambda r: make_folder(r, n_train=1, n_val=2, size=SIZE, depth_format='npy'), 'val',
                   {'image': 'images/val', 'label': 'labels/val', 'depth': 'depth/val'}, 16),
}
DAMAGES = ('truncated', 'random_bytes', 'empty', 'folder', 'link_loop', 'bit_depth', 'channels', 'size',
           'ids_out_of_range', 'depth_zeros', 'depth_65535', 'depth_nan')


@pytest.fixture(scope='module')
def pristine(tmp_path_factory):
    """Each layout written once; every example damages a copy."""
    root = tmp_path_factory.mktemp('pristine')
    return {name: spec[1](root / name) for name, spec in LAYOUTS.items()}


def _first(root: Path, folder: str) -> Path:
    return sorted(p for p in (root / folder).rglob('*') if p.is_file())[0]


def _rewrite(path: Path, arr: np.ndarray) -> None:
    if path.suffix == '.npy':
        np.save(path, arr)
    else:
        assert cv2.imwrite(str(path), arr), path


def _read(path: Path) -> np.ndarray:
    return np.load(path) if path.suffix == '.npy' else cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def damage(path: Path, kind: str, role: str, draw) -> bool:
    """Damage `path` in place; False when the damage does not apply to this file."""
    data = path.read_bytes()
    if kind == 'truncated':
        path.write_bytes(data[:draw(st.integers(1, len(data) - 1))])
    elif kind == 'random_bytes':
        path.write_bytes(draw(st.binary(min_size=1, max_size=300)))
    elif kind == 'empty':
        path.write_bytes(b'')
    elif kind == 'folder':
        path.unlink()
        path.mkdir()
    elif kind == 'link_loop':
        path.unlink()
        os.symlink(path.name, path)
    elif kind in ('bit_depth', 'channels', 'size'):
        arr = _read(path)
        if kind == 'bit_depth':
            arr = arr.astype(np.uint16) * 257 if arr.dtype == np.uint8 else (arr // 257).astype(np.uint8)
        elif kind == 'channels':
            arr = arr[..., 0] if arr.ndim == 3 else np.stack([arr] * draw(st.sampled_from([3, 4])), -1)
        else:
            arr = arr[:draw(st.integers(1, arr.shape[0] - 1)), :draw(st.integers(1, arr.shape[1]))]
        if path.suffix == '.jpg':
            path = path.with_suffix('.png')  # the same image in a lossless format, under the same name below
            assert cv2.imwrite(str(path), np.ascontiguousarray(arr))
            path.replace(path.with_suffix('.jpg'))
        else:
            _rewrite(path, np.ascontiguousarray(arr))
    elif kind == 'ids_out_of_range':
        if role != 'label':
            return False
        arr = _read(path)
        if arr.ndim == 3 and arr.dtype == np.uint16:  # SYNTHIA as published: the class in R (OpenCV's last channel)
            arr[..., 2] = 300
        elif arr.ndim == 3:  # a palette PNG (OpenCV gives its colours): plain ids instead
            arr = np.full(arr.shape[:2], 250, np.uint8)
        else:
            arr = np.full(arr.shape, 250 if arr.dtype == np.uint8 else 60000, arr.dtype)
        _rewrite(path, arr)
    else:  # depth filled with one value
        if role != 'depth':
            return False
        arr = _read(path)
        value = {'depth_zeros': 0, 'depth_65535': 65535, 'depth_nan': np.nan}[kind]
        if np.isnan(value) and arr.dtype.kind != 'f':
            return False  # integer PNGs cannot hold NaN
        arr[...] = value
        _rewrite(path, arr)
    return True


def read_all(spec: str, classes: int, split: str) -> list:
    """Every item of a split, read as training reads it."""
    ds = open_dataset(spec, n_classes=classes)
    out = []
    for s in ds.samples(split):
        image = ds.read_image(s)
        label = ds.read_label(s) if s.label is not None else None
        depth = ds.read_depth(s) if s.depth is not None else None
        out.append((image, label, depth))
    return out


class _Items(torch.utils.data.Dataset):
    """The split's items read in a DataLoader worker (what a fastai DataLoader with workers does)."""

    def __init__(self, spec, classes, split):
        self.args, self.n = (spec, classes, split), len(open_dataset(spec, n_classes=classes).samples(split))

    def __len__(self):
        return 1

    def __getitem__(self, i):
        return len(read_all(*self.args))


def _in_worker(spec: str, classes: int, split: str):
    return next(iter(torch.utils.data.DataLoader(_Items(spec, classes, split), num_workers=1, batch_size=None)))


def _check_outcome(spec: str, classes: int, split: str, damaged: Path, kind: str) -> str:
    """'read' or 'refused', after checking what reading gave."""
    try:
        items = read_all(spec, classes, split)
    except DatasetError as e:
        msg = str(e)
        assert '\n' not in msg and str(damaged) in msg, msg
        return 'refused'
    for image, label, depth in items:
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        if label is not None:
            assert label.dtype == np.uint8 and label.shape == image.shape[:2]
            assert ((label < classes) | (label == 255)).all()
        if depth is not None:
            assert depth.dtype == np.float32 and depth.shape == image.shape[:2]
            assert (np.isnan(depth) | (depth >= 0)).all()
    if kind == 'ids_out_of_range':
        assert (items[0][1] == 255).all()  # ids outside the mapping are ignored, as documented
    return 'read'


def test_damaged_files_read_correctly_or_fail_in_one_line_naming_them(pristine, tmp_path, capsys):
    outcomes, started = {}, time.time()

    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(layout=st.sampled_from(sorted(LAYOUTS)), kind=st.sampled_from(DAMAGES), role=st.sampled_from(
        ['image', 'label', 'depth']), data=st.data())
    def one(layout, kind, role, data):
        kind_name, _, split, folders, classes = LAYOUTS[layout]
        if role not in folders:
            role = 'label'
        root = tmp_path / 'copy'
        shutil.rmtree(root, ignore_errors=True)
        shutil.copytree(pristine[layout], root, symlinks=True)
        path = _first(root, folders[role])
        if not damage(path, kind, role, data.draw):
            return
        note(f'{layout}: {kind} {path}')
        outcome = _check_outcome(f'{kind_name}:{root}', classes, split, path, kind)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    one()
    with capsys.disabled():
        print(f'\nreader fuzz: {sum(outcomes.values())} damaged datasets ({outcomes}) in {time.time() - started:.1f} s')
    assert outcomes.get('refused', 0) > 0 and outcomes.get('read', 0) > 0


@pytest.mark.parametrize('layout, kind, role', [
    ('synthia_raw', 'truncated', 'image'), ('synthia_raw', 'bit_depth', 'label'), ('synthia_parsed', 'size', 'depth'),
    ('cityscapes', 'channels', 'label'), ('vistas', 'truncated', 'image'), ('folder_npy', 'random_bytes', 'depth'),
    ('folder_png', 'empty', 'label'), ('cityscapes', 'random_bytes', 'depth')])
def test_a_worker_reports_the_same_line(pristine, tmp_path, layout, kind, role):
    kind_name, _, split, folders, classes = LAYOUTS[layout]

    @settings(max_examples=1, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def one(data):
        root = tmp_path / 'copy'
        shutil.copytree(pristine[layout], root, symlinks=True)
        path = _first(root, folders[role])
        assert damage(path, kind, role, data.draw)
        spec = f'{kind_name}:{root}'
        with pytest.raises(DatasetError) as here:
            read_all(spec, classes, split)
        with pytest.raises(DatasetError) as there:
            _in_worker(spec, classes, split)
        assert 'Original Traceback' in str(there.value)  # it did cross the process boundary
        assert _message(there.value) == str(here.value) and str(path) in str(here.value)
    one()


def test_data_report_lists_every_damaged_file(tmp_path, capsys):
    import json
    src = make_synthia(tmp_path / 'synthia', n=4, size=SIZE)
    trg = make_cityscapes(tmp_path / 'cs', n_train=2, n_val=3, size=SIZE)
    images = sorted((src / 'RGB').glob('*.png'))
    labels = sorted((src / 'GT' / 'LABELS').glob('*.png'))
    val = sorted((trg / 'leftImg8bit' / 'val').rglob('*.png'))
    images[0].write_bytes(images[0].read_bytes()[:100])
    labels[2].write_bytes(b'')
    cv2.imwrite(str(labels[3]), np.zeros((3, 3), np.uint16))
    val[1].write_bytes(b'\x89PNG\r\n\x1a\n' + bytes(range(256)))
    depth = src / 'Depth' / 'Depth' / images[1].name
    depth.unlink()  # missing files are listed too, not only the first
    val_label = sorted((trg / 'gtFine' / 'val').rglob('*_labelIds.png'))[2]
    val_label.unlink()
    with pytest.raises(SystemExit) as e:
        main(['data-report', '--source', f'synthia:{src}', '--target', f'cityscapes:{trg}', '--json'])
    out, err = capsys.readouterr()
    damaged = json.loads(out)['damaged']
    assert e.value.code == 1 and err.strip().count('\n') == 0 and '6 damaged files' in err, damaged
    assert len(damaged) == 6
    for path in (images[0], labels[2], labels[3], val[1], depth, val_label):
        assert sum(str(path) in line for line in damaged) == 1, (path, damaged)


def test_a_folder_named_like_an_image_is_reported_not_skipped(tmp_path):
    from dada_fastai.datasets import open_dataset
    from layouts import make_folder
    root = make_folder(tmp_path / 'f', n_train=2, n_val=2, size=SIZE)
    folder = root / 'images' / 'train' / 'extra.png'
    folder.mkdir()
    with pytest.raises(DatasetError, match=f'{folder} is a folder where an image file should be'):
        open_dataset(f'folder:{root}').samples('train')
    problems = []
    samples = open_dataset(f'folder:{root}').samples('train', problems)
    assert len(samples) == 2 and len(problems) == 1 and str(folder) in problems[0]
