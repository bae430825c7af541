"""`dada-fastai predict --format`: every output written on a tiny model, read back and checked (ids, sizes, encodings);
the official Cityscapes evaluator (cityscapesscripts) scoring the label-id output as `dada-fastai evaluate` scores the
model; test-time augmentation; the legend of `show_results`; and the one-line refusals."""
from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from dada_fastai.cli import main
from dada_fastai.inference import evaluate_model, load_model, predict_files
from dada_fastai.model import DADA
from dada_fastai.outputs import DepthEncoding, label_ids_problem
from dada_fastai.prediction import TestTimeAugmentation as TTA  # (not a test class)
from dada_fastai.protocols import get_protocol
from dada_fastai.run_folder import RunFolder
from e2e import fails_in_one_line, make_run
from layouts import CITYSCAPES_TO_7, CITYSCAPES_TO_16, make_cityscapes, make_vistas

IMAGE = (40, 72)  # the tiny Cityscapes images (H, W)
# labelIds left out of the ground truth of the agreement test: terrain, truck and train (which the 16-class protocol
# lacks and the official 19-class evaluation counts) and those the official evaluation ignores while the 7-class
# protocol counts them (parking, rail track, guard rail, bridge, tunnel, polegroup, caravan, trailer)
NOT_SHARED = (22, 27, 31, 9, 10, 14, 15, 16, 18, 29, 30)


def _read(path: Path) -> np.ndarray:
    """A PNG as stored (bit depth kept; colour images as RGB)."""
    arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert arr is not None, path
    return arr[..., ::-1] if arr.ndim == 3 else arr


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    """A Cityscapes folder whose validation labels hold only the ids that both evaluations count or both ignore."""
    root = make_cityscapes(tmp_path_factory.mktemp('data') / 'cityscapes', n_train=1, n_val=3, size=IMAGE,
                           disparity=True)
    for label in (root / 'gtFine' / 'val').rglob('*_labelIds.png'):
        ids = _read(label)
        ids[np.isin(ids, NOT_SHARED)] = 0  # void: ignored by both
        assert (ids < 7).any() and cv2.imwrite(str(label), ids)
    return root


@pytest.fixture(scope='module')
def run16(data, tmp_path_factory):
    return make_run(tmp_path_factory.mktemp('runs') / 'dada16', 'synthia:/data/synthia', f'cityscapes:{data}',
                    depth_scale=0.01)


def _images(data: Path) -> list[Path]:
    return sorted((data / 'leftImg8bit' / 'val').rglob('*.png'))


# ---------------------------------------------------------------------------------------------------------
# Every format, read back
# ---------------------------------------------------------------------------------------------------------
def test_every_format_is_written_and_reads_back(data, run16, tmp_path, capsys):
    out = tmp_path / 'pred'
    assert main(['predict', str(run16), str(data / 'leftImg8bit' / 'val'), '--out', str(out), '--format',
                 'color,overlay,train-ids,label-ids,depth,npy', '--device', 'cpu']) == 0
    images = _images(data)
    suffixes = ('_seg.png', '_depth.png', '_overlay.png', '_trainIds.png', '_labelIds.png', '_depth_cm.png',
                '_probs.npy', '_inv_depth.npy')
    assert {p.name for p in out.iterdir()} == {'depth_encoding.json'} | {
        f'{img.stem}{s}' for img in images for s in suffixes}
    assert 'wrote 25 files' in capsys.readouterr().out
    proto, lm = get_protocol(16), load_model(run16, device='cpu')
    to_label = {train: label for label, train in CITYSCAPES_TO_16.items()}
    seen = set()
    for img in images:
        rgb = _read(img)
        _, (ids, depth), (probs, _) = lm.predict(img)
        ids, depth, probs = ids.numpy(), depth[0].numpy(), probs.numpy()
        seen |= set(np.unique(ids).tolist())
        train_ids = _read(out / f'{img.stem}_trainIds.png')
        assert train_ids.dtype == np.uint8 and train_ids.shape == IMAGE and (train_ids == ids).all()
        label_ids = _read(out / f'{img.stem}_labelIds.png')
        assert label_ids.dtype == np.uint8 and label_ids.shape == IMAGE
        assert (label_ids == np.vectorize(to_label.get)(ids)).all()
        assert (_read(out / f'{img.stem}_seg.png') == proto.colorize(ids)).all()
        assert _read(out / f'{img.stem}_depth.png').shape == (*IMAGE, 3)
        blend = np.rint(0.5 * rgb.astype(np.float32) + 0.5 * proto.colorize(ids).astype(np.float32))
        assert (_read(out / f'{img.stem}_overlay.png') == blend).all()
        saved = np.load(out / f'{img.stem}_probs.npy')
        assert saved.dtype == np.float16 and saved.shape == (16, *IMAGE)
        assert np.abs(saved.astype(np.float32) - probs).max() < 1e-3 and np.allclose(saved.sum(0), 1, atol=1e-2)
        inv = np.load(out / f'{img.stem}_inv_depth.npy')
        assert inv.dtype == np.float32 and inv.shape == IMAGE and np.array_equal(inv, depth)
        cm = _read(out / f'{img.stem}_depth_cm.png')  # SYNTHIA's convention: z = 0.01 * 65536 / (cm + 1)
        assert cm.dtype == np.uint16 and cm.shape == IMAGE
        z = depth.astype(np.float64)
        expected = np.where(z > 0, np.clip(np.rint(0.01 * 65536 / np.where(z > 0, z, 1) - 1), 1, 65535), 0)
        assert (cm == expected).all()
        inside = (cm > 1) & (cm < 65535)
        assert inside.mean() > 0.5
        back = 0.01 * 65536 / (cm[inside].astype(np.float64) + 1)  # decoded back, within the rounding
        assert np.allclose(back, depth[inside], rtol=1 / cm[inside].min())
    assert len(seen) >= 4  # the outputs were checked on a varied prediction
    encoding = json.loads((out / 'depth_encoding.json').read_text())
    assert (encoding['encoding'], encoding['unit'], encoding['depth_scale']) == ('synthia_cm', 'centimetres', 0.01)
    assert encoding['file'] == '<image stem>_depth_cm.png' and '65536' in encoding['computed']


def test_a_cityscapes_source_gives_disparity(data, tmp_path):
    """A run that learned depth from Cityscapes' disparity writes it back in that convention: p = 256 z / scale + 1."""
    run = make_run(tmp_path / 'run', f'cityscapes:{data}', f'cityscapes:{data}', classes=7, depth_scale=0.5)
    img = _images(data)[0]
    written = predict_files(run, [img], tmp_path / 'pred', formats='depth', device='cpu')
    assert [p.name for p in written] == ['depth_encoding.json', f'{img.stem}_disparity.png']
    disparity = _read(written[1])
    _, (_, depth), _ = load_model(run, device='cpu').predict(img)
    z = depth[0].numpy().astype(np.float64)
    expected = np.where(z > 0, np.clip(np.rint(256 * np.where(z > 0, z, 0) / 0.5 + 1), 1, 65535), 0)
    assert disparity.dtype == np.uint16 and (disparity == expected).all() and (disparity > 1).mean() > 0.5
    encoding = json.loads(written[0].read_text())
    assert encoding['encoding'] == 'cityscapes_disparity' and encoding['depth_scale'] == 0.5
    codec = DepthEncoding('cityscapes_disparity', 0.5)
    valid = disparity > 0
    assert np.allclose(codec.decode(disparity)[valid], z[valid], atol=0.5 * 0.5 / 256 + 1e-6)
    assert np.isnan(codec.decode(np.zeros(3, np.uint16))).all()


def test_a_model_without_its_configuration_writes_depth_in_the_papers_convention(data, run16, tmp_path):
    """Without config.yaml the depth's source and scale are unknown: SYNTHIA's convention and the paper's depth_scale
    (1) are assumed, and depth_encoding.json says so."""
    alone = tmp_path / 'alone.safetensors'
    shutil.copy(RunFolder(run16).export, alone)
    img = _images(data)[1]
    written = predict_files(alone, [img], tmp_path / 'pred', formats='depth', device='cpu')
    encoding = json.loads(written[0].read_text())
    assert (encoding['encoding'], encoding['depth_scale'], encoding['source']) == ('synthia_cm', 1.0, 'unknown')
    assert 'assumed' in encoding['note']
    z = load_model(alone, device='cpu').predict(img)[1][1][0].numpy().astype(np.float64)
    expected = np.where(z > 0, np.clip(np.rint(65536 / np.where(z > 0, z, 1) - 1), 1, 65535), 0)
    assert (_read(written[1]) == expected).all()


def test_label_ids_of_each_protocol_and_what_they_need():
    """16 classes: each train id as its Cityscapes labelId; 7 classes: a labelId of its category; unpredicted: 0."""
    p16, p7 = get_protocol(16), get_protocol(7)
    ids = np.array([[*range(16), 255]], np.uint8)
    assert p16.to_label_ids(ids).tolist() == [[*sorted(CITYSCAPES_TO_16, key=CITYSCAPES_TO_16.get), 0]]
    seven = p7.to_label_ids(np.array([[*range(7), 255]], np.uint8))[0]
    assert [CITYSCAPES_TO_7[int(v)] for v in seven[:7]] == list(range(7)) and seven[7] == 0
    assert seven[:7].tolist() == [7, 11, 17, 21, 23, 24, 26]  # road, building, pole, vegetation, sky, person, car
    assert label_ids_problem({'source': None, 'target': None, 'method': 'dada'}) is None  # the toy pair
    assert label_ids_problem({'source': 'synthia:/s', 'target': 'cityscapes:/c'}) is None
    assert 'train-ids' in label_ids_problem({'source': 'synthia:/s', 'target': 'vistas:/v'})
    assert 'train-ids' in label_ids_problem({})


# ---------------------------------------------------------------------------------------------------------
# The official evaluator agrees
# ---------------------------------------------------------------------------------------------------------
def _official(predictions: Path, data: Path) -> dict:
    """cityscapesscripts' pixel-level evaluation of the label-id files in `predictions` on the val ground truth."""
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as official
    args = copy.copy(official.args)
    args.evalInstLevelScore, args.JSONOutput, args.quiet, args.evalPixelAccuracy = False, False, True, False
    truth = sorted((data / 'gtFine' / 'val').rglob('*_gtFine_labelIds.png'))
    preds = [predictions / p.name.replace('_gtFine_labelIds.png', '_leftImg8bit_labelIds.png') for p in truth]
    return official.evaluateImgLists([str(p) for p in preds], [str(t) for t in truth], args)


_OFFICIAL_NAMES = {'light': 'traffic light', 'sign': 'traffic sign'}


@pytest.mark.parametrize('classes, tta', [(16, []), (7, []), (16, ['--tta', 'flip', '--scales', '0.75,1,1.25'])])
def test_the_official_evaluator_scores_the_label_ids_as_evaluate_does(data, tmp_path, capsys, classes, tta):
    """On ground truth without the classes only one side counts, cityscapesscripts' per-class IoU (16 classes) or
    per-category IoU (7 classes) of `predict --format label-ids` is `evaluate`'s, with test-time augmentation too."""
    run = make_run(tmp_path / 'run', 'synthia:/data/synthia', f'cityscapes:{data}', classes=classes, seed=classes)
    capsys.readouterr()
    assert main(['evaluate', str(run), '--json', '--device', 'cpu', *tta]) == 0
    ours = json.loads(capsys.readouterr().out)
    assert ours['images'] == 3 and ('tta' in ours) == bool(tta)
    pred = tmp_path / 'pred'
    assert main(['predict', str(run), str(data / 'leftImg8bit' / 'val'), '--out', str(pred), '--format', 'label-ids',
                 '--device', 'cpu', *tta]) == 0
    result = _official(pred, data)
    scores = result['classScores'] if classes == 16 else result['categoryScores']
    compared = 0
    for name, iou in ours['per_class'].items():
        theirs = scores[_OFFICIAL_NAMES.get(name, name)]
        assert (iou is None or iou != iou) == (theirs != theirs), name
        if iou is not None and iou == iou:
            assert theirs == pytest.approx(iou / 100, rel=1e-6, abs=1e-12), name
            compared += 1
    assert compared == classes and sum(v > 0 for v in ours['per_class'].values()) >= 3  # varied predictions


# ---------------------------------------------------------------------------------------------------------
# Test-time augmentation
# ---------------------------------------------------------------------------------------------------------
class PixelNet(nn.Module):
    """A tiny segmenter that sees each pixel alone (mean-pooled to 1/8, as DADA's outputs): what it predicts for a
    mirrored image is the mirror of its prediction."""

    def __init__(self, n_classes: int = 7):
        super().__init__()
        torch.manual_seed(1)
        self.seg, self.depth = nn.Conv2d(3, n_classes, 1), nn.Conv2d(3, 1, 1)

    def forward(self, x):
        x = nn.functional.avg_pool2d(x, 8)
        return self.seg(x) * 20, self.depth(x)


def _mirrored(h: int = 32, w: int = 64) -> np.ndarray:
    left = np.random.default_rng(0).integers(0, 256, (h, w // 2, 3), dtype=np.uint8)
    return np.concatenate([left, left[:, ::-1]], 1)


def test_test_time_augmentation_leaves_a_flip_invariant_input_as_it_is(run16):
    lm = load_model(run16, device='cpu')
    lm.model = PixelNet(16).eval()
    image = _mirrored()
    plain = lm.predict(image, size='input')
    flipped = lm.predict(image, size='input', flip=True)
    assert torch.equal(plain[1][0], flipped[1][0]) and len(plain[1][0].unique()) > 1
    assert torch.allclose(plain[2][0], flipped[2][0], atol=1e-5)
    assert torch.allclose(plain[1][1], flipped[1][1], atol=1e-5)
    flat = np.full((32, 64, 3), (90, 140, 200), np.uint8)  # a uniform image: the same at every scale too
    scaled = lm.predict(flat, size='input', flip=True, scales=(0.75, 1, 1.25))
    assert torch.allclose(lm.predict(flat, size='input')[2][0], scaled[2][0], atol=1e-5)


def test_test_time_augmentation_averages_the_softmax_over_flips_and_scales():
    torch.manual_seed(0)
    model = DADA(7, arch='test_resnet').eval()
    x = torch.randn(1, 3, 32, 64)
    with torch.no_grad():
        logp, depth = TTA(model, flip=True, scales=(0.5, 1.))(x)
        probs, depths = [], []
        for s in (0.5, 1.):
            xs = nn.functional.interpolate(x, scale_factor=s, mode='bilinear', align_corners=False) if s != 1 else x
            for flip in (False, True):
                seg, d = model(xs.flip(-1) if flip else xs)
                seg = nn.functional.interpolate(seg, (32, 64), mode='bilinear', align_corners=True)
                d = nn.functional.interpolate(d, (32, 64), mode='bilinear', align_corners=True)
                probs.append(seg.softmax(1).flip(-1) if flip else seg.softmax(1))
                depths.append(d.flip(-1) if flip else d)
    assert torch.allclose(logp.exp(), torch.stack(probs).mean(0), atol=1e-6)
    assert torch.allclose(depth, torch.stack(depths).mean(0), atol=1e-6)
    assert not torch.allclose(logp.exp(), probs[0], atol=1e-3)  # the flips and scales changed the result


def test_predict_with_test_time_augmentation_is_the_augmented_forward(run16, data):
    lm = load_model(run16, device='cpu')
    img = _images(data)[0]
    plain = lm.predict(img, size='input')[2][0]
    augmented = lm.predict(img, size='input', flip=True, scales=(1, 1.5))[2][0]
    x = lm.preprocess(_read(img), lm.input_size)
    with torch.no_grad():
        logp, _ = TTA(lm.model, True, (1, 1.5))(x)
    assert torch.allclose(augmented, logp.softmax(1)[0], atol=1e-5) and not torch.allclose(plain, augmented, atol=1e-3)


# ---------------------------------------------------------------------------------------------------------
# The legend
# ---------------------------------------------------------------------------------------------------------
def test_show_results_has_a_legend_of_the_class_colours(tmp_path):
    from dada_fastai.data import dada_dataloaders
    from dada_fastai.learner import dada_learner
    from e2e import tiny_pair
    dls = dada_dataloaders(*tiny_pair(tmp_path), n_classes=7, source_size=(32, 48), target_size=(32, 64), bs=2,
                           device='cpu')
    learn = dada_learner(dls, 'dada', arch='test_resnet', ndf=8)
    axs = learn.show_results(max_n=1)
    (legend,) = axs[0].figure.legends
    proto = get_protocol(7)
    assert [t.get_text() for t in legend.get_texts()] == list(proto.classes)
    colours = [tuple(round(c * 255) for c in patch.get_facecolor()[:3]) for patch in legend.get_patches()]
    assert colours == [tuple(c) for c in proto.palette]
    import matplotlib.pyplot as plt
    plt.close('all')


# ---------------------------------------------------------------------------------------------------------
# One line for each mistake
# ---------------------------------------------------------------------------------------------------------
def test_mistakes_are_one_line(data, run16, tmp_path, capsys):
    images, out = str(data / 'leftImg8bit' / 'val'), tmp_path / 'pred'
    fails_in_one_line(capsys, ['predict', str(run16), images, '--out', str(out), '--format', 'color,labelids'],
           "--format must be a comma list of color, overlay, train-ids, label-ids, depth, npy", code=1)
    fails_in_one_line(capsys, ['predict', str(run16), images, '--out', str(out), '--scales', '0.75,0'], '--scales must be')
    fails_in_one_line(capsys, ['evaluate', str(run16), '--tta', 'mirror'], "invalid choice: 'mirror'", code=2)
    vistas = make_vistas(tmp_path / 'vistas')
    run = make_run(tmp_path / 'on_vistas', 'synthia:/data/synthia', f'vistas:{vistas}', classes=7)
    fails_in_one_line(capsys, ['predict', str(run), images, '--out', str(out), '--format', 'label-ids'],
           'the run\'s target is vistas:')
    alone = tmp_path / 'alone.safetensors'  # a model without the run configuration that names its target
    shutil.copy(RunFolder(run16).export, alone)
    fails_in_one_line(capsys, ['predict', str(alone), images, '--out', str(out), '--format', 'label-ids'],
           'no run configuration (config.yaml)')
    plain = make_run(tmp_path / 'plain', 'synthia:/data/synthia', f'cityscapes:{data}', method='source_only')
    fails_in_one_line(capsys, ['predict', str(plain), images, '--out', str(out), '--format', 'color,depth'], 'has no depth block')
    from_vistas = make_run(tmp_path / 'from_vistas', f'vistas:{vistas}', f'cityscapes:{data}', classes=7)
    fails_in_one_line(capsys, ['predict', str(from_vistas), images, '--out', str(out), '--format', 'depth'], 'which has no depth')
    twins = tmp_path / 'twins'
    for sub in ('a', 'b'):
        (twins / sub).mkdir(parents=True)
        shutil.copy(_images(data)[0], twins / sub / 'x.png')
    fails_in_one_line(capsys, ['predict', str(run16), str(twins), '--out', str(out)], 'two images named x')
    assert not out.exists()
    assert len(predict_files(plain, [_images(data)[0]], out, formats='npy', device='cpu')) == 1  # probabilities alone
    assert 'label-ids' in label_ids_problem({'target': 'folder:/f', 'source': 'synthia:/s'})
    with pytest.raises(Exception, match='--scales must be'):
        evaluate_model(run16, scales=(1, -1))
