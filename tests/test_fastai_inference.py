"""The calls a fastai user makes after training, on a DADA learner: test_dl, get_preds, predict, summary; the
same prediction from an exported model; the package's top-level names; bad test items."""
from __future__ import annotations

from configparser import ConfigParser
from pathlib import Path

import numpy as np
import pytest
import torch
from fastai.torch_core import TensorImage, TensorMask
from PIL import Image

import dada_fastai
from dada_fastai.data import TensorClassMap, TensorDepth, dada_dataloaders, image_to_rgb
from dada_fastai.datasets import DatasetError
from dada_fastai.learner import dada_learner, prediction_to_size
from e2e import tiny_pair

TARGET = (32, 64)


@pytest.fixture(scope='module')
def dls(tmp_path_factory):
    pair = tiny_pair(tmp_path_factory.mktemp('data'))
    return dada_dataloaders(*pair, n_classes=7, source_size=(32, 48), target_size=TARGET, bs=2, seed=0,
                            device='cpu')


@pytest.fixture(scope='module')
def learn(dls):
    torch.manual_seed(0)
    learn = dada_learner(dls, 'dada', arch='test_resnet', ndf=8)
    learn.model.eval()
    return learn


@pytest.fixture(scope='module')
def paths(dls):
    return [s.image for s in dls.target_ds.samples('val')]


def _rgb(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert('RGB'))


# ---------------------------------------------------------------------------------------------------- names
def test_public_names_and_version():
    from dada_fastai import (METHODS, PROTOCOLS, DADALearner, LoadedModel, Protocol, dada_dataloaders as dd,
                             dada_learner as dl, get_protocol, load_model)
    from dada_fastai import inference, learner, protocols
    assert dl is learner.dada_learner and dd is dada_dataloaders and load_model is inference.load_model
    assert METHODS is learner.METHODS and 'dada' in METHODS and Protocol is protocols.Protocol
    assert PROTOCOLS[7] is get_protocol(7) and DADALearner is learner.DADALearner and LoadedModel is inference.LoadedModel
    assert set(dada_fastai.__all__) <= set(dir(dada_fastai))
    cfg = ConfigParser(delimiters=['='])
    cfg.read(Path(__file__).resolve().parents[1] / 'settings.ini', encoding='utf-8')
    assert dada_fastai.__version__ == cfg['DEFAULT']['version']
    with pytest.raises(AttributeError, match='no_such_name'):
        dada_fastai.no_such_name


# ---------------------------------------------------------------------------------------------------- test_dl
def test_test_dl_reads_every_kind_as_the_validation_images(dls, paths):
    """Paths, PIL images, uint8 and 16-bit arrays give the batch the validation set gives for the same file:
    resized to the target size and normalised alike."""
    valid_x = dls.valid.new(bs=1).one_batch()[0]  # the first validation image
    rgb = _rgb(paths[0])
    # 16-bit values, not all multiples of 257: // 257 gives rgb back
    sixteen = np.minimum(rgb.astype(np.int64) * 257 + 200, 65535).astype(np.uint16)
    items = [paths[0], str(paths[0]), Image.open(paths[0]), rgb, sixteen]
    tdl = dls.test_dl(items)
    assert tdl.bs == dls.valid.bs and not tdl.shuffle
    xs = torch.cat([b[0] for b in tdl])
    assert xs.shape == (5, 3, *TARGET)
    for i, x in enumerate(xs):
        assert torch.allclose(x, valid_x[0], atol=1e-6), f'item {i} ({type(items[i]).__name__}) differs'
    assert xs.mean().abs() < 3 and not torch.allclose(xs, xs.clamp(0, 1))  # normalised, not 0..1


def test_gray_rgba_and_palette_images_are_converted_by_the_datasets_rule():
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (20, 30), dtype=np.uint8)
    rgb = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    rgba = np.concatenate([rgb, np.zeros((20, 30, 1), np.uint8)], -1)  # alpha 0 everywhere: dropped, not blended
    assert np.array_equal(image_to_rgb(gray), np.repeat(gray[..., None], 3, -1))
    assert np.array_equal(image_to_rgb(gray[..., None]), np.repeat(gray[..., None], 3, -1))
    assert np.array_equal(image_to_rgb(Image.fromarray(gray)), image_to_rgb(gray))
    assert np.array_equal(image_to_rgb(rgba), rgb) and np.array_equal(image_to_rgb(Image.fromarray(rgba)), rgb)
    assert np.array_equal(image_to_rgb(rgb), rgb) and np.array_equal(image_to_rgb(Image.fromarray(rgb)), rgb)
    gray16 = gray.astype(np.uint16) * 257
    assert np.array_equal(image_to_rgb(gray16), image_to_rgb(gray))
    assert np.array_equal(image_to_rgb(Image.fromarray(gray16)), image_to_rgb(gray))  # PIL's 16-bit gray
    pal = Image.fromarray(rgb).convert('P', palette=Image.ADAPTIVE, colors=8)
    assert np.array_equal(image_to_rgb(pal), np.asarray(pal.convert('RGB')))


def test_test_dl_of_files_written_gray_rgba_and_16_bit(dls, tmp_path):
    from dada_fastai.datasets import write_png
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)
    write_png(tmp_path / 'rgb.png', rgb)
    Image.fromarray(np.concatenate([rgb, np.full((24, 40, 1), 7, np.uint8)], -1)).save(tmp_path / 'rgba.png')
    write_png(tmp_path / 'rgb16.png', rgb.astype(np.uint16) * 257)
    Image.fromarray(rgb[..., 0]).save(tmp_path / 'gray.png')
    tdl = dls.test_dl([tmp_path / n for n in ('rgb.png', 'rgba.png', 'rgb16.png', 'gray.png')])
    x = torch.cat([b[0] for b in tdl])
    assert torch.allclose(x[1], x[0]) and torch.allclose(x[2], x[0])
    gray = tdl.decode((x[3:],))[0][0].int()  # decoded back to 0..255: gray in all 3 channels (up to rounding)
    assert (gray[0] - gray[1]).abs().max() <= 1 and (gray[0] - gray[2]).abs().max() <= 1


# ---------------------------------------------------------------------------------------------------- get_preds
def test_get_preds_at_the_input_size(learn, dls, paths):
    tdl = dls.test_dl([paths[0], _rgb(paths[1]), paths[0]])
    inp, (probs, depth), targs, (ids, dec_depth) = learn.get_preds(dl=tdl, with_input=True, with_decoded=True)
    assert inp.shape == (3, 3, *TARGET) and targs is None
    assert probs.shape == (3, 7, *TARGET) and depth.shape == (3, 1, *TARGET)
    assert torch.allclose(probs.sum(1), torch.ones(3, *TARGET), atol=1e-5) and (probs >= 0).all()
    assert ids.shape == (3, *TARGET) and ids.dtype == torch.int64 and torch.equal(ids, probs.argmax(1))
    assert torch.equal(dec_depth, depth) and torch.allclose(probs[0], probs[2])
    assert not torch.allclose(probs[0], probs[1])  # two different images
    # the logits of the model, upsampled to its input as evaluate upsamples them
    with torch.no_grad():
        seg, dep = learn.model(inp[:1])
    expected = torch.softmax(torch.nn.functional.interpolate(seg, TARGET, mode='bilinear', align_corners=True), 1)
    assert torch.allclose(probs[:1], expected, atol=1e-5)
    (small, small_depth), _ = learn.get_preds(dl=tdl, size=(16, 24))
    assert small.shape == (3, 7, 16, 24) and small_depth.shape == (3, 1, 16, 24)


def test_get_preds_at_each_images_own_size_as_evaluate(learn, dls, paths):
    crop = _rgb(paths[0])[:30, :50]
    tdl = dls.test_dl([paths[1], crop])
    (probs, depth), _, (ids, _) = learn.get_preds(dl=tdl, with_decoded=True, size='original')
    assert [tuple(p.shape) for p in probs] == [(7, 40, 72), (7, 30, 50)]
    assert [tuple(d.shape) for d in depth] == [(1, 40, 72), (1, 30, 50)]
    assert [tuple(i.shape) for i in ids] == [(40, 72), (30, 50)] and torch.equal(ids[1], probs[1].argmax(0))
    # the validation image's class map is the one `evaluate` scores (logits upsampled to the label's size)
    xb, yb, *_ = list(dls.valid.new(bs=1))[1]
    pred, _ = learn.predict_batch(xb, yb.shape[-2:])
    assert yb.shape[-2:] == (40, 72) and torch.equal(ids[0], pred[0])


def test_get_preds_on_the_validation_set_keeps_the_targets(learn, dls):
    (probs, depth), targs = learn.get_preds()
    assert probs.shape == (len(dls.valid.dataset), 7, *TARGET)
    assert targs.shape == (len(dls.valid.dataset), 40, 72)  # labels at full resolution


# ---------------------------------------------------------------------------------------------------- predict
def test_predict_returns_fastais_triple_for_segmentation_and_depth(learn, paths):
    (mask, inv_depth), (ids, depth), (probs, depth2) = learn.predict(paths[0])
    assert isinstance(mask, TensorClassMap) and isinstance(mask, TensorMask) and isinstance(inv_depth, TensorDepth)
    assert mask.shape == ids.shape == (40, 72) and probs.shape == (7, 40, 72) and depth.shape == (1, 40, 72)
    assert torch.equal(ids, probs.argmax(0)) and torch.equal(mask.as_subclass(torch.Tensor), ids)
    assert depth is depth2 and torch.equal(inv_depth.as_subclass(torch.Tensor), depth)
    assert mask.codes == list(learn.protocol.classes)
    # the same as get_preds on a test DataLoader at the image's size
    (p, _), _ = learn.get_preds(dl=learn.dls.test_dl([paths[0]]), size='original')
    assert torch.allclose(p[0], probs)
    # at the model's input size, with the decoded input first
    img, (mask_in, _), _, (probs_in, _) = learn.predict(Image.open(paths[0]), with_input=True, size='input')
    assert isinstance(img, TensorImage) and img.shape == (3, *TARGET)
    assert not img.is_floating_point() and 0 <= img.min() and img.max() <= 255  # decoded to pixels, as fastai's
    assert mask_in.shape == TARGET and probs_in.shape == (7, *TARGET)


def test_class_map_shows_in_the_protocols_colours(learn, paths):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    (mask, inv_depth), _, _ = learn.predict(paths[0])
    ax = mask.show()
    shown = np.asarray(ax.images[0].get_array())
    assert np.array_equal(shown, learn.protocol.colorize(mask.numpy()))
    ax2 = inv_depth.show()
    assert np.asarray(ax2.images[0].get_array()).shape == (40, 72, 3)
    plt.close('all')


def test_exported_model_predicts_the_same(learn, paths, tmp_path):
    from dada_fastai import load_model
    learn.path = tmp_path
    learn.export('export.safetensors')
    lm = load_model(tmp_path / 'export.safetensors', device='cpu')
    assert lm.input_size == TARGET
    for item in (paths[0], _rgb(paths[1])):
        (m1, d1), (i1, _), (p1, _) = learn.predict(item)
        (m2, d2), (i2, _), (p2, _) = lm.predict(item)
        assert type(m1) is type(m2) and type(d1) is type(d2)
        assert torch.equal(i1, i2) and torch.allclose(p1, p2, atol=1e-5) and torch.allclose(d1, d2, atol=1e-5)
    (_, _), (ids, _), (probs, _) = lm.predict(paths[0], size='input')
    assert ids.shape == TARGET and probs.shape == (7, *TARGET)


def test_padded_prediction_back_at_the_images_size():
    """An image that kept its aspect ratio (30x40 into 32x64: 32x42 of image, padding after) comes back at
    30x40 from the image part only."""
    x = torch.zeros(1, 2, 32, 64)
    x[:, 1, :, :42] = 1.  # class 1 on the image, class 0 on the padding
    out = prediction_to_size(x, (32, 64), (30, 40), 'pad')
    assert out.shape == (1, 2, 30, 40) and (out.argmax(1) == 1).all()
    assert (prediction_to_size(x, (32, 64), (30, 40), 'stretch').argmax(1) == 0).any()


def test_source_only_learner_predicts_without_depth(dls, paths):
    torch.manual_seed(0)
    so = dada_learner(dls, 'source_only', arch='test_resnet')
    (probs, depth), _ = so.get_preds(dl=dls.test_dl(paths))
    assert probs.shape == (2, 7, *TARGET) and depth is None
    (mask, inv_depth), (ids, depth), (probs, depth2) = so.predict(paths[0])
    assert inv_depth is None and depth is None and depth2 is None and ids.shape == (40, 72)
    assert 'No discriminator' in so.summary()


# ---------------------------------------------------------------------------------------------------- summary
def test_summary_shows_the_segmenter_on_both_domains_and_each_discriminator(dls):
    torch.manual_seed(0)
    learn = dada_learner(dls, 's6', arch='test_resnet', ndf=8)
    text = learn.summary()
    assert 'Segmenter on the source images' in text and 'DADA (Input shape: 2 x 3 x 32 x 48)' in text
    assert 'Segmenter on the target images (Input shape: 1 x 3 x 32 x 64)' in text
    assert 'Discriminator on the surprisal map' in text and 'Discriminator on the depth map' in text
    assert 'Discriminator (Input shape: 1 x 7 x 32 x 64)' in text and 'Discriminator (Input shape: 1 x 1 x 32 x 64)' in text
    n_disc = sum(p.numel() for p in learn.dada.discriminators['depth'].parameters())
    assert f'Total params: {n_disc:,}' in text
    assert 'Loss function' in text and 'DADATrainer' in text
    learn.fit_iters(1, schedule='constant')  # the summary leaves the learner able to train


# ---------------------------------------------------------------------------------------------------- bad input
def _one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert '\n' not in msg
    return msg


def test_bad_test_items_are_refused_in_one_line(dls, paths, tmp_path):
    with pytest.raises(DatasetError, match='empty') as e:
        dls.test_dl([])
    _one_line(e)
    cases = [(torch.zeros(3, 8, 8), 'test item 1: a Tensor cannot be read as an image; pass a path'),
             (np.zeros((8, 8, 3), np.float32), 'test item 1: numpy array .* float32: pixels must be uint8 or uint16'),
             (np.zeros((3, 8, 8), np.uint8), r'test item 1: numpy array of shape \(3, 8, 8\).*channels last'),
             (np.zeros((8, 8, 2), np.uint8), 'expected .*gray.*RGB.*RGBA'),
             (tmp_path / 'nope.png', 'test item 1: image file not found: .*nope.png; check the path'),
             (tmp_path, 'test item 1: .* is a folder, not an image; pass its image files')]
    for bad, pattern in cases:
        with pytest.raises(DatasetError, match=pattern) as e:
            dls.test_dl([paths[0], bad])
        _one_line(e)


def test_unreadable_and_unsupported_images_fail_in_one_line_when_read(learn, tmp_path):
    from dada_fastai import load_model
    broken = tmp_path / 'broken.jpg'
    broken.write_bytes(b'not an image at all')
    with pytest.raises(DatasetError, match=f'cannot decode {broken}') as e:
        learn.predict(broken)
    _one_line(e)
    with pytest.raises(DatasetError, match='PIL image of mode F .*uint8 or uint16') as e:
        learn.predict(Image.fromarray(np.zeros((8, 8), np.float32)))
    _one_line(e)
    with pytest.raises(DatasetError, match='a dict cannot be read as an image') as e:
        learn.predict({'image': 1})
    _one_line(e)
    learn.path = tmp_path
    learn.export('m.safetensors')
    with pytest.raises(DatasetError, match='a list cannot be read as an image'):
        load_model(tmp_path / 'm.safetensors', device='cpu').predict([1, 2])
