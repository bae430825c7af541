"""The fastai side of the data: batches, content, pairing, normalisation, display, augmentation, errors.

Datasets are the tiny layouts of tests/layouts.py (known content); expected values are computed here from that
content with PIL (bicubic images, nearest labels and depth) and the id mappings of layouts.py.
"""
from __future__ import annotations

import random
import sys
from pathlib import Path

import matplotlib

matplotlib.use('Agg')
import cv2  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from fastai.vision.core import TensorImage, TensorMask  # noqa: E402
from fasttransform import Pipeline  # noqa: E402
from PIL import Image  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import layouts as L  # noqa: E402

from dada_fastai.data import (PairedAugment, TensorDepth, dada_dataloaders, dada_datablock,  # noqa: E402
                              depth_to_rgb, normalization, parse_size, target_index, target_order)
from dada_fastai.datasets import DatasetError, open_dataset  # noqa: E402

SRC_SIZE, TRG_SIZE = (12, 20), (8, 16)  # (H, W), smaller than the files: resizing is exercised
REF_MEAN_BGR = (104.00698793, 116.66876762, 122.67891434)
VISTAS_TO_7 = {i: tid for i, (*_, tid) in enumerate(L.VISTAS_LABELS)}


# ---------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------
def pil_resize(arr: np.ndarray, size: tuple[int, int], resample) -> np.ndarray:
    """What the reference does at load: PIL resize to (H, W)."""
    mode = 'F' if arr.dtype == np.float32 else None
    return np.asarray(Image.fromarray(arr, mode=mode).resize((size[1], size[0]), resample))


def inverse_depth(depth_cm: np.ndarray) -> np.ndarray:
    return (np.float32(65536) / (depth_cm.astype(np.float32) + np.float32(1))).astype(np.float32)


def synthia_expected(name: str, classes: int = 16, size=SRC_SIZE) -> dict[str, np.ndarray]:
    c = L.synthia_content(name)
    ids = L.expected_ids(L.SYNTHIA_TO_16 if classes == 16 else L.SYNTHIA_TO_7, c['class_ids'])
    return {'image': pil_resize(c['rgb'], size, Image.BICUBIC), 'mask': pil_resize(ids, size, Image.NEAREST),
            'depth': cv2.resize(inverse_depth(c['depth']), size[::-1], interpolation=cv2.INTER_NEAREST)}


def cityscapes_stem(path: Path) -> str:
    return path.name[:-len('_leftImg8bit.png')]


def target_expected(item, size=TRG_SIZE) -> np.ndarray:
    """The resized image of a target DataItem (Cityscapes or Vistas) from the known content."""
    if item.ds.kind == 'cityscapes':
        rgb = L.cityscapes_content(cityscapes_stem(item.sample.image))['rgb']
    else:  # Vistas images are JPEG: decode the file itself
        rgb = cv2.imread(str(item.sample.image))[..., ::-1]
    return pil_resize(np.ascontiguousarray(rgb), size, Image.BICUBIC)


def as_uint8(x: torch.Tensor) -> np.ndarray:
    """A (3, H, W) 0..1 image tensor -> (H, W, 3) uint8."""
    return (x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def epoch_batches(dl) -> list[tuple]:
    return [tuple(t.clone() for t in b) for b in dl]


def identify(images: torch.Tensor, candidates: list[np.ndarray]) -> list[int]:
    """Which candidate (H, W, 3) uint8 image each (3, H, W) image of a batch is, exactly."""
    out = []
    for x in images:
        hits = [i for i, c in enumerate(candidates) if np.array_equal(as_uint8(x), c)]
        assert len(hits) == 1, hits
        out.append(hits[0])
    return out


def epoch_pairs(dls) -> list[tuple[int, int]]:
    """(source index, target index) of every sample of the train epoch, identified from the pixels."""
    src = [synthia_expected(L.synthia_name(i))['image'] for i in range(len(dls.train.dataset))]
    trg = [target_expected(t) for t in dls.train.pairing.targets]
    pairs = []
    for b in dls.train:
        pairs += list(zip(identify(b[0], src), identify(b[1], trg)))
    return pairs


# ---------------------------------------------------------------------------------------------------------
# fixtures: tiny datasets in their real layouts
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def roots(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp('data')
    return {'synthia_raw': L.make_synthia(d / 'synthia_raw', n=5, layout='raw'),
            'synthia_parsed': L.make_synthia(d / 'synthia_parsed', n=5, layout='parsed'),
            'cityscapes': L.make_cityscapes(d / 'cityscapes', n_train=3, n_val=2),
            'vistas': L.make_vistas(d / 'vistas', n_train=2, n_val=2),
            'folder': L.make_folder(d / 'folder', n_train=3, n_val=2)}


def make_dls(roots, source='synthia_raw', target='cityscapes', classes=16, **kwargs):
    kind = lambda k: k.split('_')[0]  # noqa: E731
    opts = dict(n_classes=classes, source_size=SRC_SIZE, target_size=TRG_SIZE, bs=1, norm='none')
    return dada_dataloaders(f'{kind(source)}:{roots[source]}', f'{kind(target)}:{roots[target]}', **{**opts, **kwargs})


# ---------------------------------------------------------------------------------------------------------
# batches
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('source,target,classes', [('synthia_raw', 'cityscapes', 16),
                                                   ('synthia_parsed', 'cityscapes', 16),
                                                   ('synthia_raw', 'vistas', 7), ('folder', 'cityscapes', 16)])
def test_train_batch_structure(roots, source, target, classes):
    dls = make_dls(roots, source, target, classes, bs=2, source_size='12x20', target_size=(8, 16))
    b = dls.train.one_batch()
    assert dls.train.n_inp == 2 and len(b) == 4
    x_src, x_trg, mask, depth = b
    assert [type(t) for t in b] == [TensorImage, TensorImage, TensorMask, TensorDepth]
    assert x_src.shape == (2, 3, 12, 20) and x_trg.shape == (2, 3, 8, 16)
    assert mask.shape == (2, 12, 20) and depth.shape == (2, 1, 12, 20)  # depth like the model's output
    assert [t.dtype for t in b] == [torch.float32, torch.float32, torch.int64, torch.float32]
    assert 0 <= x_src.min() and x_src.max() <= 1
    valid = mask[mask != 255]
    assert valid.numel() and valid.max() < classes


def test_device_defaults_to_fastais_default_device(roots):
    from fastai.torch_core import default_device
    dls = make_dls(roots)
    assert dls.device == default_device() and dls.train.device == dls.valid.device == default_device()
    assert make_dls(roots, device='cpu').train.one_batch()[0].device.type == 'cpu'


def test_sizes_configurable(roots):
    dls = make_dls(roots, source_size=(20, 36), target_size=10, bs=1)
    x_src, x_trg, mask, depth = dls.train.one_batch()
    assert x_src.shape[-2:] == mask.shape[-2:] == depth.shape[-2:] == (20, 36) and x_trg.shape[-2:] == (10, 10)


@pytest.mark.parametrize('layout', ['synthia_raw', 'synthia_parsed'])
def test_train_batch_content(roots, layout):
    """Masks are the decoded train ids resized nearest, depth 65536/(d+1) resized nearest, images PIL bicubic,
    and the target is the image paired with the sample's position, resized bicubic."""
    dls = make_dls(roots, layout)
    targets, items = dls.train.pairing.targets, dls.train.dataset.items
    for (pos, idx, trg), (x_src, x_trg, mask, depth) in zip(dls.train.get_idxs(), dls.train):
        exp = synthia_expected(items[idx].source.sample.image.name)
        assert np.array_equal(as_uint8(x_src[0]), exp['image'])
        assert np.array_equal(mask[0].numpy(), exp['mask'])
        assert np.array_equal(depth[0, 0].numpy(), exp['depth'])
        assert trg == target_index(0, 0, pos, len(targets))
        assert np.array_equal(as_uint8(x_trg[0]), target_expected(targets[trg]))


def test_seven_classes_and_vistas_target(roots):
    dls = make_dls(roots, 'synthia_raw', 'vistas', classes=7)
    idx = dls.train.get_idxs()[0][1]
    mask = dls.train.one_batch()[2][0].numpy()
    assert np.array_equal(mask, synthia_expected(L.synthia_name(idx), classes=7)['mask'])
    x, m = dls.valid.one_batch()
    c = L.vistas_content('v000_vistas')
    # As the reference: the 30x18 (WxH) image keeps its aspect ratio into 16x8: 13x8 (int(30 * 8/18)) at the
    # top left, black to the right; the full-resolution label is padded (ignored) to 16/8's aspect ratio: 36x18.
    assert x.shape == (1, 3, *TRG_SIZE) and m.shape == (1, 18, 36)
    item = dls.valid.dataset.items[0]
    rgb = item.ds.read_image(item.sample)  # the decoded JPEG
    assert np.array_equal(as_uint8(x[0])[:, :13], pil_resize(rgb, (8, 13), Image.BICUBIC))
    assert (x[0, :, :, 13:] == 0).all()
    assert np.array_equal(m[0, :, :30].numpy(), L.expected_ids(VISTAS_TO_7, c['label_ids']))
    assert (m[0, :, 30:] == 255).all()


def test_synthia_depth_is_resized_with_opencvs_nearest_rule(tmp_path):
    """As the reference (`cv2.resize(..., INTER_NEAREST)` in its depth reader): from 320 to 128 columns OpenCV
    takes columns 0, 2, 5, 7..., Pillow's nearest rule 1, 3, 6, 8..."""
    from dada_fastai.data import DataItem, ReadDepth
    from dada_fastai.datasets import write_synthia_sample
    h, w = 8, 320
    depth_cm = np.tile(np.arange(w, dtype=np.uint16) * 7, (h, 1)) + np.arange(h, dtype=np.uint16)[:, None] * 3000
    write_synthia_sample(tmp_path, '0000000.png', np.zeros((h, w, 3), np.uint8), np.zeros((h, w), np.uint16),
                         depth_cm)
    ds = open_dataset('synthia', tmp_path)
    got = np.asarray(ReadDepth((4, 128))(DataItem(ds, ds.samples('train')[0])))
    cm = np.rint(65536 / got - 1).astype(int)  # back to centimetres
    cols, rows = cm[0] // 7, cm[:, 0] // 3000
    expected_cols = cv2.resize(np.arange(w, dtype=np.float32)[None], (128, 1), interpolation=cv2.INTER_NEAREST)[0]
    assert cols[:4].tolist() == [0, 2, 5, 7] and np.array_equal(cols, expected_cols)
    assert rows.tolist() == [0, 2, 4, 6]
    assert np.array_equal(got, cv2.resize(65536 / (depth_cm.astype(np.float32) + 1), (128, 4),
                                          interpolation=cv2.INTER_NEAREST))


def test_sparse_depth_nan_in_folder_source(roots):
    """The folder layout's LiDAR-like depth: 0 = no return -> NaN; elsewhere 65536/(d_cm + 1) (unit mm)."""
    dls = make_dls(roots, 'folder', source_size=(20, 30), bs=1)
    items = dls.train.dataset.items
    for (pos, idx, _), (_, _, mask, depth) in zip(dls.train.get_idxs(), dls.train):
        image = items[idx].source.sample.image
        rel = image.relative_to(roots['folder'] / 'images' / 'train').with_suffix('').as_posix()
        c = L.folder_content(L.folder_key('train', rel))
        d = depth[0, 0].numpy()
        assert np.array_equal(np.isnan(d), c['depth'] == 0)
        ok = c['depth'] > 0
        np.testing.assert_allclose(d[ok], inverse_depth(c['depth'] * np.float32(0.1))[ok], rtol=1e-6)
        mapping16 = {k: L.CLASSES16.index(v) for k, v in L.FOLDER_MAPPING.items() if v != 'ignore'}
        assert np.array_equal(mask[0].numpy(), L.expected_ids(mapping16, c['label_ids']))


def test_sparse_depth_resized_nearest_keeps_nan(roots):
    dls = make_dls(roots, 'folder', source_size=(10, 15))
    depth = torch.cat([b[3] for b in dls.train])
    assert depth.shape == (3, 1, 10, 15) and torch.isnan(depth).any() and torch.isfinite(depth).any()
    finite = depth[torch.isfinite(depth)]
    assert (finite > 0).all()


@pytest.mark.parametrize('target,classes,label_shape', [('cityscapes', 16, (16, 32)), ('vistas', 7, (18, 36))])
def test_validation_batches(roots, target, classes, label_shape):
    """Validation: (target image brought to the target size, mask at the label's full resolution; Vistas's
    padded to the aspect ratio of the target size, as its images are)."""
    dls = make_dls(roots, 'synthia_raw', target, classes)
    batches = list(dls.valid)
    assert len(batches) == 2
    for b in batches:
        assert len(b) == 2 and isinstance(b[0], TensorImage) and isinstance(b[1], TensorMask)
        assert b[0].shape == (1, 3, *TRG_SIZE) and b[1].shape == (1, *label_shape) and b[1].dtype == torch.int64
    if target == 'cityscapes':
        stem = cityscapes_stem(dls.valid.dataset.items[0].sample.image)
        c = L.cityscapes_content(stem)
        assert np.array_equal(batches[0][1][0].numpy(), L.expected_ids(L.CITYSCAPES_TO_16, c['label_ids']))
        assert np.array_equal(as_uint8(batches[0][0][0]), pil_resize(c['rgb'], TRG_SIZE, Image.BICUBIC))


# ---------------------------------------------------------------------------------------------------------
# pairing and order
# ---------------------------------------------------------------------------------------------------------
def test_every_source_once_per_epoch_shuffled(roots):
    dls = make_dls(roots)
    orders = []
    for epoch in range(3):
        dls.train.set_epoch(epoch)
        pairs = epoch_pairs(dls)
        srcs, trgs = [s for s, _ in pairs], [t for _, t in pairs]
        assert sorted(srcs) == list(range(5))
        # 5 samples, 3 targets: the draws are permutations of the targets one after the other
        assert sorted(trgs[:3]) == [0, 1, 2] and len(set(trgs[3:])) == 2
        orders.append(pairs)
    assert len({tuple(s for s, _ in o) for o in orders}) > 1, 'the shuffle must change with the epoch'
    assert len({tuple(t for _, t in o) for o in orders}) > 1, 'the pairing must change with the epoch'
    assert any([s for s, _ in o] != list(range(5)) for o in orders), 'the sources must be shuffled'


def test_order_is_a_function_of_seed_and_epoch(roots):
    a, b = make_dls(roots, seed=3, bs=2), make_dls(roots, seed=3, bs=2)
    for epoch in (0, 4):
        a.train.set_epoch(epoch), b.train.set_epoch(epoch)
        ba, bb = epoch_batches(a.train), epoch_batches(b.train)
        assert len(ba) == 2  # 5 sources, bs 2, drop_last
        for x, y in zip(ba, bb):
            assert all(torch.equal(u, v) for u, v in zip(x, y))
    a.train.set_epoch(0)
    e0 = epoch_batches(a.train)
    a.train.set_epoch(1)
    e1 = epoch_batches(a.train)
    a.train.set_epoch(0)
    assert all(torch.equal(u, v) for x, y in zip(e0, epoch_batches(a.train)) for u, v in zip(x, y))
    assert not all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(e0, e1))
    other = make_dls(roots, seed=4)
    assert epoch_pairs(other) != epoch_pairs(make_dls(roots, seed=3))


def test_pairing_is_a_function_of_seed_epoch_and_position(roots):
    """The target of a position is computed from (seed, epoch, position) alone: the same inputs give the same
    target in any call order, another epoch another permutation; no sampler is bound or set before a call."""
    n = 7
    draws = [target_index(3, 1, pos, n) for pos in range(2 * n)]
    assert [target_index(3, 1, pos, n) for pos in reversed(range(2 * n))] == draws[::-1]  # no state between calls
    assert draws == target_order(3, 1, n, 2 * n).tolist()
    assert sorted(draws[:n]) == sorted(draws[n:]) == list(range(n))  # permutations of the targets, one after another
    assert draws[:n] != [target_index(3, 2, pos, n) for pos in range(n)]  # another epoch: another permutation
    assert draws[:n] != [target_index(4, 1, pos, n) for pos in range(n)]  # another seed: another permutation
    # the DataLoader pairs by these values: each epoch's targets are target_order's, read from the pixels
    dls = make_dls(roots, seed=3)
    for epoch in (0, 2):
        dls.train.set_epoch(epoch)
        assert [t for _, t in epoch_pairs(dls)] == target_order(3, epoch, 3, 5).tolist()
    # a DataBlock used directly needs no binding: item i is paired as position i of epoch 0
    from dada_fastai.data import DataItem
    src = open_dataset(f'synthia:{roots["synthia_raw"]}')
    trg = open_dataset(f'cityscapes:{roots["cityscapes"]}')
    sources, targets = [DataItem(src, s) for s in src.samples('train')], [DataItem(trg, s) for s in trg.samples('train')]
    dsets = dada_datablock(targets, L.CLASSES16, SRC_SIZE, TRG_SIZE, seed=3).datasets(sources)
    for i in range(len(sources)):
        assert dsets.items[i].source == sources[i] and dsets.items[i].target == targets[target_index(3, 0, i, 3)]
        assert np.array_equal(np.asarray(dsets[i][1]), target_expected(targets[target_index(3, 0, i, 3)]))


def test_workers_give_the_same_batches(roots):
    ref = epoch_batches(make_dls(roots, bs=2, seed=1).train)
    dls = make_dls(roots, bs=2, seed=1, num_workers=2)
    got = epoch_batches(dls.train)
    assert len(got) == len(ref) and all(torch.equal(u, v) for x, y in zip(ref, got) for u, v in zip(x, y))


@pytest.mark.parametrize('n', [3, 12])
def test_epoch_length(roots, n):
    dls = make_dls(roots)
    dls.train.n = n
    assert len(dls.train) == n
    pairs = epoch_pairs(dls)
    srcs, trgs = [s for s, _ in pairs], [t for _, t in pairs]
    assert len(pairs) == n
    if n < 5:
        assert len(set(srcs)) == n  # a short epoch: no source twice
    else:
        assert sorted(srcs[:5]) == sorted(srcs[5:10]) == list(range(5))  # every source once per pass
        for k in range(0, 9, 3):
            assert sorted(trgs[k:k + 3]) == [0, 1, 2]  # fresh target draws, not the first pass repeated


def test_epoch_len_argument(roots):
    dls = make_dls(roots, bs=2, epoch_len=4)
    assert len(dls.train) == 4 and len(list(dls.train)) == 4


def test_indices_as_lists_build_the_same_items(roots):
    """fastai's DistributedDL broadcasts `get_idxs` as a tensor and hands back lists: same items."""
    dl = make_dls(roots, seed=2).train
    for s in dl.get_idxs():
        a, b = dl.create_item(s), dl.create_item(list(s))
        assert [x.tobytes() for x in a] == [x.tobytes() for x in b]


@pytest.mark.parametrize('bs,skip', [(1, 2), (2, 1)])
def test_skip_drops_exactly_the_first_batches(roots, bs, skip):
    dls = make_dls(roots, bs=bs, seed=7)
    dls.train.set_epoch(2)
    full = epoch_batches(dls.train)
    dls.train.skip = skip
    assert len(dls.train) == len(full) - skip
    rest = epoch_batches(dls.train)
    assert len(rest) == len(full) - skip
    assert all(torch.equal(u, v) for x, y in zip(full[skip:], rest) for u, v in zip(x, y))
    dls.train.skip = 0
    assert len(epoch_batches(dls.train)) == len(full)


# ---------------------------------------------------------------------------------------------------------
# normalisation
# ---------------------------------------------------------------------------------------------------------
def test_reference_normalisation_and_decode():
    tfms = Pipeline(normalization('reference'))
    x = TensorImage(torch.rand(2, 3, 4, 5))
    dev = tfms.fs[-1].mean.device
    x = x.to(dev)
    y = tfms(x)
    mean = torch.tensor(REF_MEAN_BGR, device=dev).view(1, 3, 1, 1)
    torch.testing.assert_close(y, x.flip(1) * 255 - mean, rtol=1e-5, atol=1e-3)
    assert isinstance(y, TensorImage)
    torch.testing.assert_close(tfms.decode(y), x, rtol=1e-5, atol=1e-5)


def test_reference_normalisation_in_batches(roots):
    dls = make_dls(roots, norm='reference')
    idx = dls.train.get_idxs()[0][1]
    x = dls.train.one_batch()[0][0].cpu()
    rgb = synthia_expected(L.synthia_name(idx))['image'].astype(np.float32)
    expected = torch.from_numpy(rgb[..., ::-1] - np.float32(REF_MEAN_BGR)).permute(2, 0, 1)
    torch.testing.assert_close(x, expected, rtol=1e-5, atol=1e-3)


def test_other_normalisations():
    import timm
    arch = 'vit_base_patch16_224.augreg_in21k'  # timm's config has mean = std = 0.5, not ImageNet's
    cfg = timm.get_pretrained_cfg(arch)
    (norm,) = normalization('timm', arch)
    assert np.allclose(norm.mean.flatten().cpu(), cfg.mean) and np.allclose(norm.std.flatten().cpu(), cfg.std)
    (norm,) = normalization('imagenet')
    assert np.allclose(norm.mean.flatten().cpu(), (0.485, 0.456, 0.406))
    assert np.allclose(norm.std.flatten().cpu(), (0.229, 0.224, 0.225))
    assert normalization('none') == []
    with pytest.raises(ValueError) as e:
        normalization('zscore')
    assert all(k in str(e.value) for k in ('zscore', 'reference', 'timm', 'imagenet'))


# ---------------------------------------------------------------------------------------------------------
# display
# ---------------------------------------------------------------------------------------------------------
def test_show_batch_and_summary(roots, capsys):
    dls = make_dls(roots, bs=2, norm='reference')
    axs = dls.train.show_batch()
    assert axs[0].get_subplotspec().get_gridspec().get_geometry() == (2, 4)  # one row per pair, 4 columns
    assert all(a.images for a in axs)  # source image, mask, depth, target image all drawn
    plt.close('all')
    src = open_dataset(f'synthia:{roots["synthia_parsed"]}')
    trg = open_dataset(f'cityscapes:{roots["cityscapes"]}')
    from dada_fastai.data import DataItem
    block = dada_datablock([DataItem(trg, s) for s in trg.samples('train')], L.CLASSES16, SRC_SIZE, TRG_SIZE)
    block.summary([DataItem(src, s) for s in src.samples('train')])
    out = capsys.readouterr().out
    assert 'TensorDepth of size 4x1x12x20' in out and 'TensorMask of size 4x12x20' in out


def test_depth_to_rgb():
    d = np.array([[1.0, 10.0], [100.0, np.nan]], np.float32)
    rgb = depth_to_rgb(d).astype(int)
    assert rgb.shape == (2, 2, 3) and depth_to_rgb(d).dtype == np.uint8
    far, mid, near, nan = rgb[0, 0], rgb[0, 1], rgb[1, 0], rgb[1, 1]
    assert (nan == 0).all()
    assert far.sum() < mid.sum() < near.sum() and far.sum() < 40  # far is dark, near bright
    assert near[0] > near[2] and near[0] > 200  # warm: red dominates blue
    assert depth_to_rgb(torch.from_numpy(d)[None, None]).shape == (2, 2, 3)
    assert (depth_to_rgb(np.full((3, 3), np.nan)) == 0).all()


# ---------------------------------------------------------------------------------------------------------
# sizes
# ---------------------------------------------------------------------------------------------------------
def test_parse_size():
    assert parse_size('760x1280') == (760, 1280) == parse_size(' 760X1280 ') == parse_size((760, 1280))
    assert parse_size([512, 1024]) == (512, 1024) and parse_size(np.array([2, 3])) == (2, 3)
    assert parse_size(512) == (512, 512) == parse_size('512') and parse_size(np.int64(4)) == (4, 4)
    assert parse_size(None) is None
    for bad in ('abc', '10x', 'x10', '10x20x30', '1.5x2', '0x5', '5x-1', -3, 0, (1, 2, 3), (1.5, 2), True, 2.5):
        with pytest.raises(ValueError, match='bad size'):
            parse_size(bad)


# ---------------------------------------------------------------------------------------------------------
# augmentation
# ---------------------------------------------------------------------------------------------------------
# SYNTHIA ids of the left and right halves of the augmentation source (16-class train ids after mapping)
LEFT_IDS, RIGHT_IDS = (3, 2, 6), (1, 8, 10)
COLOURS = {3: (200, 30, 30), 2: (30, 200, 30), 6: (30, 30, 200), 1: (220, 220, 40), 8: (40, 220, 220),
           10: (220, 40, 220)}


@pytest.fixture(scope='module')
def aug_roots(tmp_path_factory) -> dict[str, Path]:
    """A SYNTHIA (parsed) source of 16x16 blocks whose colour and depth are functions of the class, left-half
    classes differing from right-half ones (a flip shows); a Cityscapes target with a left-to-right ramp."""
    d = tmp_path_factory.mktemp('aug')
    rng = np.random.default_rng(0)
    h, w = 64, 128
    palette = np.array([COLOURS.get(k, (0, 0, 0)) for k in range(11)], np.uint8)
    for i in range(4):
        half = (h // 16, w // 32)  # 16x16 blocks
        blocks = np.concatenate([rng.choice(LEFT_IDS, half), rng.choice(RIGHT_IDS, half)], 1)
        ids = np.kron(blocks, np.ones((16, 16), int)).astype(np.uint8)
        L.write_rgb(d / 'syn' / 'RGB' / L.synthia_name(i), palette[ids])
        L._imwrite(d / 'syn' / 'parsed_LABELS' / L.synthia_name(i), ids)
        L._imwrite(d / 'syn' / 'Depth' / L.synthia_name(i), ids.astype(np.uint16) * 100 + 50)  # depth cm per class
    ramp = np.repeat(np.repeat(np.linspace(0, 255, 64)[None, :, None], 32, 0), 3, 2).astype(np.uint8)
    for split in ('train', 'val'):
        for j in range(2):
            L.write_rgb(d / 'cs' / 'leftImg8bit' / split / 'aachen' / f'aachen_{j:06d}_000019_leftImg8bit.png', ramp)
            L._imwrite(d / 'cs' / 'gtFine' / split / 'aachen' / f'aachen_{j:06d}_000019_gtFine_labelIds.png',
                       np.full((32, 64), 7, np.uint8))
    return {'source': d / 'syn', 'target': d / 'cs', 'ramp': ramp}


def uniform5(m: np.ndarray) -> np.ndarray:
    """Pixels whose 5x5 neighbourhood holds a single value (False on the border)."""
    win = np.lib.stride_tricks.sliding_window_view(m, (5, 5))
    out = np.zeros(m.shape, bool)
    out[2:-2, 2:-2] = (win == win[..., 2:3, 2:3]).all((-1, -2))
    return out


def aug_dls(aug_roots, augment, **kwargs):
    return dada_dataloaders(f'synthia:{aug_roots["source"]}', f'cityscapes:{aug_roots["target"]}', source_size=(32, 64),
                            target_size=(16, 32), bs=2, norm='none', augment=augment, **kwargs)


def test_augmentation_keeps_source_aligned_and_augments_target_independently(aug_roots):
    random.seed(0)  # fastai's random transforms draw from Python's `random`
    dls = aug_dls(aug_roots, True)
    train_ids = {k: L.SYNTHIA_TO_16[k] for k in COLOURS}
    colour_of = {train_ids[k]: np.array(c) for k, c in COLOURS.items()}
    depth_of = {train_ids[k]: 65536 / (k * 100 + 50 + 1) for k in COLOURS}
    left_classes = {train_ids[k] for k in LEFT_IDS}
    plain_trg = pil_resize(aug_roots['ramp'], (16, 32), Image.BICUBIC)
    src_flips, trg_flips, trg_changed, src_scales = [], [], 0, set()
    for epoch in range(4):
        dls.train.set_epoch(epoch)
        for x_src, x_trg, mask, depth in dls.train:
            assert x_src.shape == (2, 3, 32, 64) and mask.shape == (2, 32, 64) and depth.shape == (2, 1, 32, 64)
            assert x_trg.shape == (2, 3, 16, 32)
            for i in range(2):
                m, dep, img = mask[i].numpy(), depth[i, 0].numpy(), as_uint8(x_src[i]).astype(int)
                assert set(np.unique(m)) <= set(colour_of)
                # mask and depth: the same nearest geometry, so the depth is exactly the mask's class depth
                assert np.allclose(dep, np.vectorize(depth_of.get)(m).astype(np.float32), rtol=1e-6)
                # image and mask: the pixel colour is the class colour away from the bicubic-blurred edges (pixels
                # whose 5x5 mask neighbourhood is one class); the mirrored mask does not match
                interior = uniform5(m)
                expected = np.stack([colour_of[int(k)] for k in m.flat]).reshape(img.shape)
                assert interior.sum() > 100
                assert (np.abs(img - expected).max(-1) < 12)[interior].mean() > 0.97
                assert (np.abs(img[:, ::-1] - expected).max(-1) < 12)[interior].mean() < 0.5
                src_flips.append(m[:, 0].tolist()[0] not in left_classes)
                src_scales.add(int((np.diff(m, axis=1) != 0).sum()))
                t = as_uint8(x_trg[i]).astype(int)
                trg_flips.append(t[:, :4].mean() > t[:, -4:].mean())
                trg_changed += not np.array_equal(t, plain_trg)
    assert any(src_flips) and not all(src_flips)
    assert any(trg_flips) and not all(trg_flips)
    assert src_flips != trg_flips, 'source and target must be flipped by independent draws'
    assert trg_changed > len(trg_flips) // 2 and len(src_scales) > 1  # crops of different scales


def test_no_augmentation_is_deterministic_and_plain(aug_roots):
    dls = aug_dls(aug_roots, False)
    a, b = epoch_batches(dls.train), epoch_batches(dls.train)
    assert all(torch.equal(u, v) for x, y in zip(a, b) for u, v in zip(x, y))
    plain_trg = pil_resize(aug_roots['ramp'], (16, 32), Image.BICUBIC)
    assert all(np.array_equal(as_uint8(t), plain_trg) for x in a for t in x[1])


def test_paired_augment_alone():
    from fastai.vision.core import PILImage, PILMask
    from dada_fastai.data import PILDepth
    b = (PILImage(Image.new('RGB', (40, 24))), PILImage(Image.new('RGB', (64, 32))), PILMask(Image.new('L', (40, 24))),
         PILDepth(Image.new('F', (40, 24))))
    out = PairedAugment((12, 20), (8, 16))(b, split_idx=0)
    assert [o.size for o in out] == [(20, 12), (16, 8), (20, 12), (20, 12)]
    assert [type(o) for o in out] == [type(o) for o in b]
    assert [o.size for o in PairedAugment((12, 20), (8, 16))(b, split_idx=1)] == [o.size for o in b]  # train only
    flips = PairedAugment(None, None)(b, split_idx=0)
    assert [o.size for o in flips] == [o.size for o in b]


# ---------------------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------------------
def test_missing_source_root(roots, tmp_path):
    missing = tmp_path / 'no_such_synthia'
    with pytest.raises(DatasetError) as e:
        dada_dataloaders(f'synthia:{missing}', f'cityscapes:{roots["cityscapes"]}')
    msg = str(e.value)
    assert '\n' not in msg and str(missing) in msg and 'synthia' in msg.lower()


def test_default_workers_scale_with_the_cores(monkeypatch):
    """No workers on CPU; on a GPU up to 8 per process, a core left for the training loop."""
    import os
    from dada_fastai import runs
    assert runs.default_workers(torch.device('cpu')) == 0 and runs.default_workers(None) == 0
    cuda = torch.device('cuda')
    for cores, expected in ((16, 8), (6, 5), (2, 1), (1, 1)):
        monkeypatch.setattr(os, 'sched_getaffinity', lambda pid, n=cores: set(range(n)))
        assert runs.default_workers(cuda) == expected, cores
    monkeypatch.setattr(os, 'sched_getaffinity', lambda pid: set(range(16)))
    monkeypatch.setenv('WORLD_SIZE', '4')  # 4 processes share the 16 cores
    assert runs.default_workers(cuda) == 3
    monkeypatch.setenv('WORLD_SIZE', '8')  # two machines of 4 processes: the cores are per machine
    monkeypatch.setenv('LOCAL_WORLD_SIZE', '4')
    assert runs.default_workers(cuda) == 3
