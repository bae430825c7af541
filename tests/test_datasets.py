"""Dataset readers on tiny datasets in each publisher's exact layout: decoded content and every error."""
from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from dada_fastai.datasets import (KINDS, CityscapesDataset, DatasetError, FolderDataset, Sample, SynthiaDataset,
                                  VistasDataset, open_dataset, parse_spec)
from layouts import (CITYSCAPES_TO_7, CITYSCAPES_TO_16, CLASSES7, CLASSES16, FOLDER_MAPPING, SYNTHIA_TO_7,
                     SYNTHIA_TO_16, VISTAS_LABELS, cityscapes_content, expected_ids, folder_content, folder_key,
                     make_cityscapes, make_folder, make_synthia, make_vistas, synthia_content,
                     vistas_content, write_palette_png)


def raises_one_line(path: Path | str, call, *args, **kwargs) -> str:
    """Run `call`, expect a DatasetError whose message is one line naming `path`; return the message."""
    with pytest.raises(DatasetError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert '\n' not in message and str(path) in message, message
    return message


def folder_rel(ds: FolderDataset, s: Sample, split: str) -> str:
    """The sample's image path under images/{split}, without suffix."""
    return s.image.relative_to(ds.root / 'images' / split).with_suffix('').as_posix()


# ---------------------------------------------------------------- decoded content

@pytest.mark.parametrize('layout', ['raw', 'parsed'])
@pytest.mark.parametrize('n_classes, mapping', [(16, SYNTHIA_TO_16), (7, SYNTHIA_TO_7)])
def test_synthia_labels_images_depth(tmp_path, layout, n_classes, mapping):
    root = make_synthia(tmp_path / 'synthia', n=3, layout=layout)
    ds = open_dataset(f'synthia:{root}', n_classes=n_classes)
    assert isinstance(ds, SynthiaDataset) and ds.encoding == layout and ds.has_depth
    samples = ds.samples('train')
    assert [s.image.name for s in samples] == ['0000000.png', '0000001.png', '0000002.png']
    for s in samples:
        c = synthia_content(s.image.name)
        label = ds.read_label(s)
        assert label.dtype == np.uint8 and label.shape == (24, 40)
        np.testing.assert_array_equal(label, expected_ids(mapping, c['class_ids']))
        np.testing.assert_array_equal(ds.read_raw_label(s), c['class_ids'])
        image = ds.read_image(s)
        assert image.dtype == np.uint8
        np.testing.assert_array_equal(image, c['rgb'])


def test_synthia_16bit_three_channel_trap(tmp_path):
    root = make_synthia(tmp_path / 'synthia', n=1)
    s = open_dataset('synthia', root).samples('train')[0]
    stored = cv2.imread(str(s.label), cv2.IMREAD_UNCHANGED)
    assert stored.dtype == np.uint16 and stored.shape == (24, 40, 3)  # a real 16-bit 3-channel file
    assert (stored[..., 1] > 255).any() and (stored[..., 2] > 0).any()  # 16-bit instance ids in G, classes in R
    c = synthia_content(s.image.name)
    ids = open_dataset('synthia', root).read_raw_label(s)
    np.testing.assert_array_equal(ids, c['class_ids'])
    assert (ids > 0).any() and not np.array_equal(ids, c['instance_ids'])


@pytest.mark.parametrize('layout', ['raw', 'parsed'])
def test_synthia_inverse_depth_exact(tmp_path, layout):
    root = make_synthia(tmp_path / 'synthia', n=2, layout=layout)
    ds = open_dataset('synthia', root)
    for s in ds.samples('train'):
        d = synthia_content(s.image.name)['depth']
        z = ds.read_depth(s)
        assert z.dtype == np.float32
        np.testing.assert_array_equal(z, np.float32(65536) / (d.astype(np.float32) + np.float32(1)))
        assert z.flat[0] == 65536 and z.flat[1] == 1  # d = 0 is a depth in SYNTHIA, not a hole
        assert not np.isnan(z).any()


def test_synthia_prefers_raw_layout_and_has_no_val(tmp_path):
    root = make_synthia(tmp_path / 'synthia', n=1, layout='raw')
    make_synthia(root, n=1, layout='parsed')
    ds = open_dataset('synthia', root)
    assert ds.encoding == 'raw'
    assert ds.has_split('train') and not ds.has_split('val')
    message = raises_one_line(root, ds.samples, 'val')
    assert 'no labelled validation split' in message


@pytest.mark.parametrize('n_classes, mapping', [(16, CITYSCAPES_TO_16), (7, CITYSCAPES_TO_7)])
def test_cityscapes_labels(tmp_path, n_classes, mapping):
    root = make_cityscapes(tmp_path / 'cs', n_train=3, n_val=3)
    ds = open_dataset(f'cityscapes:{root}', n_classes=n_classes)
    assert isinstance(ds, CityscapesDataset) and not ds.has_depth
    val = ds.samples('val')
    assert [s.image.parent.name for s in val] == ['aachen', 'bochum', 'bremen']
    for s in val:
        c = cityscapes_content(s.image.name[:-len('_leftImg8bit.png')], (16, 32))
        np.testing.assert_array_equal(ds.read_label(s), expected_ids(mapping, c['label_ids']))
        np.testing.assert_array_equal(ds.read_image(s), c['rgb'])
    assert all(s.depth is None for s in val)


def test_cityscapes_train_unlabelled_and_disparity(tmp_path):
    root = make_cityscapes(tmp_path / 'cs', n_train=2, n_val=1, train_labels=False, disparity=True)
    ds = open_dataset('cityscapes', root)
    assert ds.has_depth
    train = ds.samples('train')
    assert len(train) == 2 and all(s.label is None for s in train)
    raises_one_line(train[0].image, ds.read_label, train[0])
    for s in train:
        p = cityscapes_content(s.image.name[:-len('_leftImg8bit.png')], (16, 32))['disparity']
        z = ds.read_depth(s)
        assert z.dtype == np.float32
        np.testing.assert_array_equal(np.isnan(z), p == 0)
        np.testing.assert_array_equal(z[p > 0], (p[p > 0].astype(np.float32) - 1) / 256)


@pytest.mark.parametrize('labels', ['palette', 'ids', 'rgb'])
def test_vistas_labels_by_readable_name(tmp_path, labels):
    root = make_vistas(tmp_path / 'vistas', n_train=2, n_val=2, labels=labels)
    ds = open_dataset(f'vistas:{root}', n_classes=7)
    assert isinstance(ds, VistasDataset) and not ds.has_depth
    mapping = {i: tid for i, (*_, tid) in enumerate(VISTAS_LABELS)}
    for split, folder in (('train', 'training'), ('val', 'validation')):
        samples = ds.samples(split)
        assert len(samples) == 2 and all(s.image.parent.parent.name == folder for s in samples)
        for s in samples:
            raw = vistas_content(s.image.stem)['label_ids']
            np.testing.assert_array_equal(ds.read_raw_label(s), raw)  # palette indices, not expanded colours
            np.testing.assert_array_equal(ds.read_label(s), expected_ids(mapping, raw))
            assert ds.read_image(s).shape == (18, 30, 3)


def test_palette_labels_are_read_as_indices_even_where_colours_repeat(tmp_path):
    """A palette may give two indices the same colour (Vistas' pads its palette with black): the ids are the
    stored indices, not the first index of each colour."""
    root = make_vistas(tmp_path / 'vistas', n_train=0, n_val=1)
    ds = open_dataset(f'vistas:{root}', n_classes=7)
    s = ds.samples('val')[0]
    palette = np.zeros((256, 3), np.uint8)
    palette[:len(VISTAS_LABELS)] = [colour for _, _, colour, _ in VISTAS_LABELS]
    palette[12] = palette[2]  # 'Car' drawn in the colour of 'Road'
    ids = np.tile(np.array([[2, 12, 12], [11, 12, 2]], np.uint8), (9, 10))  # the image's 18x30
    write_palette_png(s.label, ids, palette)
    np.testing.assert_array_equal(ds.read_raw_label(s), ids)
    mapping = {i: tid for i, (*_, tid) in enumerate(VISTAS_LABELS)}
    np.testing.assert_array_equal(ds.read_label(s), expected_ids(mapping, ids))


@pytest.mark.parametrize('n_classes, mapping, classes', [
    (16, FOLDER_MAPPING, ('road', 'building', 'person', 'car')),
    (7, {0: 'ignore', 7: 'flat', 11: 'construction', 24: 'human', 26: 6}, None)])
@pytest.mark.parametrize('label_bits', [8, 16])
def test_folder_labels(tmp_path, n_classes, mapping, classes, label_bits):
    raw_ids = (0, 7, 11, 24, 26, 99, 300) if label_bits == 16 else (0, 7, 11, 24, 26, 99)
    root = make_folder(tmp_path / 'mine', n_train=3, n_val=1, id_mapping=mapping, classes=classes,
                       raw_ids=raw_ids, label_bits=label_bits)
    ds = open_dataset(f'folder:{root}', n_classes=n_classes)
    names = CLASSES16 if n_classes == 16 else CLASSES7
    train_ids = {k: v if isinstance(v, int) else (255 if v == 'ignore' else names.index(v)) for k, v in mapping.items()}
    samples = ds.samples('train')
    assert [folder_rel(ds, s, 'train') for s in samples] == ['seq_a/000000', 'seq_a/000002', 'seq_b/000001']
    for s in samples:
        c = folder_content(folder_key('train', folder_rel(ds, s, 'train')), raw_ids=raw_ids)
        label = ds.read_label(s)
        np.testing.assert_array_equal(label, expected_ids(train_ids, c['label_ids']))
        assert (label[np.isin(c['label_ids'], [99, 300])] == 255).all()  # ids outside the mapping
        np.testing.assert_array_equal(ds.read_image(s), c['rgb'])


@pytest.mark.parametrize('depth_format', ['png', 'npy', 'tiff'])
def test_folder_sparse_depth(tmp_path, depth_format):
    root = make_folder(tmp_path / 'mine', n_train=2, n_val=1, depth_format=depth_format, unit='mm')
    ds = open_dataset('folder', root)
    assert ds.has_depth
    for s in ds.samples('train'):
        assert s.depth.suffix == f'.{depth_format}'
        d = folder_content(folder_key('train', folder_rel(ds, s, 'train')))['depth']
        z = ds.read_depth(s)
        assert z.dtype == np.float32 and (d == 0).any()
        np.testing.assert_array_equal(np.isnan(z), d == 0)
        np.testing.assert_allclose(z[d > 0], 65536 / (d[d > 0] / 10 + 1), rtol=1e-6)


def test_folder_inverse_depth_and_gray_rgba_images(tmp_path):
    root = make_folder(tmp_path / 'mine', n_train=2, n_val=0, depth_format='npy')
    (root / 'dataset.yaml').write_text('id_mapping: {7: road}\ndepth: {inverse: true, scale: 0.5}\n')
    ds = open_dataset('folder', root)
    s0, s1 = ds.samples('train')
    d = np.load(s0.depth)
    z = ds.read_depth(s0)
    np.testing.assert_array_equal(np.isnan(z), d == 0)
    np.testing.assert_array_equal(z[d > 0], d[d > 0] * np.float32(0.5))
    gray = np.arange(20 * 30, dtype=np.uint8).reshape(20, 30)
    cv2.imwrite(str(s0.image), gray)
    np.testing.assert_array_equal(ds.read_image(s0), np.stack([gray] * 3, -1))
    rgba = np.dstack([gray, gray // 2, gray // 3, np.full_like(gray, 128)])  # BGRA for OpenCV
    cv2.imwrite(str(s1.image), rgba)
    np.testing.assert_array_equal(ds.read_image(s1), rgba[..., 2::-1])


def test_parse_spec_and_kinds(tmp_path):
    assert KINDS == ('synthia', 'cityscapes', 'vistas', 'folder')
    assert parse_spec(f'Cityscapes:{tmp_path}') == ('cityscapes', tmp_path)
    message = raises_one_line('carla:/data/x', parse_spec, 'carla:/data/x')
    assert all(k in message for k in KINDS)
    raises_one_line('/data/x', parse_spec, '/data/x')
    raises_one_line(tmp_path, open_dataset, 'gta', tmp_path)


# ---------------------------------------------------------------- errors

@pytest.mark.parametrize('kind, n_classes', [('synthia', 16), ('cityscapes', 16), ('vistas', 7), ('folder', 16)])
def test_missing_root(tmp_path, kind, n_classes):
    root = tmp_path / 'nowhere'
    message = raises_one_line(root, open_dataset, f'{kind}:{root}', n_classes=n_classes)
    assert 'expected' in message


def test_synthia_missing_folders_name_the_split_with_depth(tmp_path):
    root = make_synthia(tmp_path / 'cvpr16', n=1)
    shutil.rmtree(root / 'Depth')  # SYNTHIA_RAND_CVPR16: RGB/ and GT/, no Depth/
    message = raises_one_line(root, open_dataset, 'synthia', root)
    assert 'SYNTHIA-RAND-CITYSCAPES' in message and 'no depth' in message
    root = make_synthia(tmp_path / 'norgb', n=1)
    shutil.rmtree(root / 'RGB')
    message = raises_one_line(root / 'RGB', open_dataset, 'synthia', root)
    assert 'GT/LABELS/ and Depth/Depth/ (SYNTHIA-RAND-CITYSCAPES, the split with depth)' in message
    empty = tmp_path / 'empty'
    empty.mkdir()
    assert 'parsed_LABELS/' in raises_one_line(empty, open_dataset, 'synthia', empty)


def test_missing_split_folder_lists_layout(tmp_path):
    root = make_cityscapes(tmp_path / 'cs', n_train=1, n_val=0)
    ds = open_dataset('cityscapes', root)
    assert not ds.has_split('val')
    message = raises_one_line(root / 'leftImg8bit' / 'val', ds.samples, 'val')
    assert 'leftImg8bit/{train,val}/<city>/*_leftImg8bit.png' in message
    vistas = make_vistas(tmp_path / 'vistas', n_val=0)
    raises_one_line(vistas / 'validation' / 'images', open_dataset('vistas', vistas, 7).samples, 'val')
    folder = make_folder(tmp_path / 'mine', n_val=0)
    raises_one_line(folder / 'images' / 'val', open_dataset('folder', folder).samples, 'val')
    raises_one_line(root, ds.samples, 'test')


def test_empty_split(tmp_path):
    root = make_synthia(tmp_path / 'synthia', n=0)
    for sub in ('RGB', 'GT/LABELS', 'Depth/Depth'):
        (root / sub).mkdir(parents=True)
    message = raises_one_line(root / 'RGB', open_dataset('synthia', root).samples, 'train')
    assert 'empty' in message
    cs = make_cityscapes(tmp_path / 'cs', n_train=1, n_val=0)
    (cs / 'leftImg8bit' / 'val' / 'aachen').mkdir(parents=True)
    raises_one_line(cs / 'leftImg8bit' / 'val', open_dataset('cityscapes', cs).samples, 'val')


@pytest.mark.parametrize('what', ['label', 'depth'])
def test_synthia_image_without_label_or_depth(tmp_path, what):
    root = make_synthia(tmp_path / 'synthia', n=2)
    missing = root / ('GT/LABELS' if what == 'label' else 'Depth/Depth') / '0000001.png'
    missing.unlink()
    message = raises_one_line(missing, open_dataset('synthia', root).samples, 'train')
    assert str(root / 'RGB' / '0000001.png') in message


def test_cityscapes_val_image_without_label(tmp_path):
    root = make_cityscapes(tmp_path / 'cs', n_train=1, n_val=2)
    missing = root / 'gtFine' / 'val' / 'bochum' / 'bochum_000001_000019_gtFine_labelIds.png'
    missing.unlink()
    raises_one_line(missing, open_dataset('cityscapes', root).samples, 'val')


@pytest.mark.parametrize('what', ['labels', 'depth'])
def test_folder_image_without_label_or_depth(tmp_path, what):
    root = make_folder(tmp_path / 'mine', n_train=2, n_val=1)
    missing = root / what / 'train' / 'seq_b' / '000001.png'
    missing.unlink()
    message = raises_one_line(missing, open_dataset('folder', root).samples, 'train')
    assert str(root / 'images' / 'train' / 'seq_b' / '000001.png') in message


def _one_synthia_sample(tmp_path):
    """A one-image SYNTHIA dataset and its sample, for tests that damage its files."""
    ds = open_dataset('synthia', make_synthia(tmp_path / 'synthia', n=1))
    return ds, ds.samples('train')[0]


def test_folder_without_depth_folder(tmp_path):
    root = make_folder(tmp_path / 'mine', n_train=1, n_val=1, depth_format=None)
    ds = open_dataset('folder', root)
    s = ds.samples('train')[0]
    assert not ds.has_depth and s.depth is None
    raises_one_line(s.image, ds.read_depth, s)


def test_size_mismatch(tmp_path):
    ds, s = _one_synthia_sample(tmp_path)
    cv2.imwrite(str(s.label), np.zeros((12, 40, 3), np.uint16))
    message = raises_one_line(s.label, ds.read_label, s)
    assert str(s.image) in message and '40x12' in message and '40x24' in message
    cv2.imwrite(str(s.depth), np.zeros((24, 41, 3), np.uint16))
    assert str(s.image) in raises_one_line(s.depth, ds.read_depth, s)


@pytest.mark.parametrize('target', ['image', 'label', 'depth'])
def test_truncated_png(tmp_path, target):
    ds, s = _one_synthia_sample(tmp_path)
    path = getattr(s, target)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    read = {'image': ds.read_image, 'label': ds.read_label, 'depth': ds.read_depth}[target]
    assert 'truncated' in raises_one_line(path, read, s)


def test_unreadable_files(tmp_path):
    ds, s = _one_synthia_sample(tmp_path)
    noise = np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes()
    s.label.write_bytes(noise)
    raises_one_line(s.label, ds.read_label, s)
    vistas = make_vistas(tmp_path / 'vistas', n_train=1, n_val=1)
    vs = open_dataset('vistas', vistas, 7)
    v = vs.samples('val')[0]
    v.image.write_bytes(noise)
    raises_one_line(v.image, vs.read_image, v)
    s.image.unlink()
    raises_one_line(s.image, ds.read_image, s)


def test_synthia_label_dropped_to_8_bits(tmp_path):
    ds, s = _one_synthia_sample(tmp_path)
    cv2.imwrite(str(s.label), np.zeros((24, 40, 3), np.uint8))
    assert '16-bit' in raises_one_line(s.label, ds.read_label, s)


@pytest.mark.parametrize('text, problem', [
    ('id_mapping: {7: road\n  depth: [', 'cannot parse'),
    ('id_mapping: {7: road}\ndepth: {unit: furlong}\n', 'unknown depth unit'),
    ('id_mapping: {7: tarmac}\n', "'tarmac'"),
    ('id_mapping: {7: road}\nclasses: [road, tarmac]\n', 'tarmac'),
    ('id_mapping: {70000: road}\n', '70000'),
    ('id_map: {7: road}\n', 'unknown keys'),
    ('- just\n- a list\n', 'mapping'),
    ('classes: [road]\n', 'id_mapping is missing'),
    ('id_mapping: {7: road}\n', 'depth.unit is not set'),
])
def test_folder_bad_config(tmp_path, text, problem):
    root = make_folder(tmp_path / 'mine', n_train=1, n_val=0)
    (root / 'dataset.yaml').write_text(text)
    assert problem in raises_one_line(root / 'dataset.yaml', open_dataset, 'folder', root)


def test_folder_missing_config(tmp_path):
    root = make_folder(tmp_path / 'mine', n_train=1, n_val=0)
    (root / 'dataset.yaml').unlink()
    assert 'dataset.yaml' in raises_one_line(root, open_dataset, 'folder', root)


def test_vistas_needs_seven_classes_and_config(tmp_path):
    root = make_vistas(tmp_path / 'vistas', n_train=1, n_val=1)
    assert '--classes 7' in raises_one_line(root, open_dataset, f'vistas:{root}', n_classes=16)
    (root / 'config.json').write_text('{"labels": [{"name": "x"}]')
    raises_one_line(root / 'config.json', open_dataset, 'vistas', root, 7)
    (root / 'config.json').unlink()
    raises_one_line(root / 'config.json', open_dataset, 'vistas', root, 7)


def test_folder_json_config_with_string_keys(tmp_path):
    root = make_folder(tmp_path / 'mine', n_train=1, n_val=0, depth_format=None)
    (root / 'dataset.yaml').unlink()
    (root / 'dataset.json').write_text('{"id_mapping": {"7": "road", "26": 12, "0": null}}')
    ds = open_dataset('folder', root)
    s = ds.samples('train')[0]
    raw = folder_content(folder_key('train', folder_rel(ds, s, 'train')))['label_ids']
    np.testing.assert_array_equal(ds.read_label(s), expected_ids({7: 0, 26: 12}, raw))


def test_folder_fit_pad_keeps_the_aspect_ratio(tmp_path):
    """`fit: pad` in dataset.yaml brings images to a domain's size as Vistas does; other values are refused."""
    from dada_fastai.data import DataItem, ReadImage, ReadMask
    root = make_folder(tmp_path / 'folder', size=(20, 30))
    config = root / 'dataset.yaml'
    assert open_dataset('folder', root, 16).fit == 'stretch'
    config.write_text(config.read_text() + 'fit: pad\n')
    ds = open_dataset('folder', root, 16)
    assert ds.fit == 'pad'
    s = ds.samples('val')[0]
    img = np.asarray(ReadImage((20, 60))(DataItem(ds, s)))  # 30x20 into 60x20: 30x20 at the left, black after
    assert img.shape == (20, 60, 3) and (img[:, 30:] == 0).all()
    assert np.array_equal(img[:, :30], ds.read_image(s))
    mask = np.asarray(ReadMask(None, frame=(10, 30))(DataItem(ds, s)))  # full resolution, padded to 3:1
    assert mask.shape == (20, 60) and (mask[:, 30:] == 255).all()
    assert np.array_equal(mask[:, :30], ds.read_label(s))
    config.write_text(config.read_text().replace('fit: pad', 'fit: crop'))
    assert 'fit must be stretch or pad' in raises_one_line(config, open_dataset, 'folder', root, 16)
