"""Tests of the procedural toy domain pair (dada_fastai.toy)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest

from dada_fastai import datasets
from dada_fastai.protocols import CITYSCAPES_CATEGORY, get_protocol, lookup_table
from dada_fastai.toy import (CITYSCAPES_ID, MATERIALS, SKY_DEPTH, STEREO_BASELINE, TRAIN_ID, ToyConfig, config_key,
                             default_root, disparity_png, make_toy_pair, render_scene, scene_rng, toy_specs)

SMALL = ToyConfig(size=(48, 96))
TINY = ToyConfig(size=(32, 64), n_source=3, n_target_train=2, n_target_val=2, seed=3)
DOMAINS = ('source', 'target')


def scenes(domain: str, cfg: ToyConfig = SMALL, n: int = 8) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The first `n` scenes of a domain as make_toy_pair renders them."""
    return [render_scene(scene_rng(cfg.seed, domain, i), cfg, domain) for i in range(n)]


def read(path: Path) -> np.ndarray:
    """A PNG as stored (16 bits kept, channels in BGR order)."""
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert img is not None, path
    return img


def test_material_tables_agree():
    assert (TRAIN_ID == lookup_table(CITYSCAPES_CATEGORY)[CITYSCAPES_ID]).all()
    assert set(TRAIN_ID.tolist()) == set(range(7))


@pytest.mark.parametrize('domain', DOMAINS)
def test_deterministic_for_a_seed(domain):
    a, b, c = (render_scene(np.random.default_rng(s), SMALL, domain) for s in (5, 5, 6))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0]) and not np.array_equal(a[1], c[1])


@pytest.mark.parametrize('domain', DOMAINS)
def test_outputs_and_all_seven_classes(domain):
    seen = set()
    for rgb, labels, depth in scenes(domain):
        assert rgb.shape == (48, 96, 3) and rgb.dtype == np.uint8
        assert labels.shape == (48, 96) and labels.dtype == np.uint8
        assert depth.shape == (48, 96) and depth.dtype == np.float32
        assert labels.max() <= 6
        seen |= set(np.unique(labels).tolist())
    assert seen == set(range(7))


@pytest.mark.parametrize('domain', DOMAINS)
def test_every_class_covers_enough_pixels_to_be_learned(domain):
    # at the toy's size, the small classes (objects, people, vehicles) must not be a rounding error: people stand
    # near the camera, alone or in groups, and each class covers at least 2% of the pixels in both domains
    labels = np.stack([labels for _, labels, _ in scenes(domain, ToyConfig(), n=16)])
    share = np.bincount(labels.ravel(), minlength=7) / labels.size
    assert (share > 0.02).all(), share.round(3)


@pytest.mark.parametrize('domain', DOMAINS)
def test_depth_is_exact(domain):
    for i, (_, labels, depth) in enumerate(scenes(domain)):
        cam = SMALL.camera(domain, scene_rng(SMALL.seed, domain, i))  # the camera is drawn first
        ground = np.broadcast_to(cam.ground_depth(), SMALL.size)
        below = np.isfinite(ground)
        assert (np.diff(ground[below[:, 0], 0]) < 0).all()  # the ground gets farther towards the horizon
        flat, sky = labels == 0, labels == 4
        np.testing.assert_allclose(depth[flat], ground[flat], rtol=1e-6)
        for col in range(0, SMALL.size[1], 7):
            d = depth[flat[:, col], col]
            assert (np.diff(d) < 0).all()  # nearer going down each column
        assert (depth[sky] == SKY_DEPTH).all() and (depth[~sky] < 500).all()
        standing = ~flat & ~sky & below  # objects in front of the ground they hide
        assert standing.any() and (depth[standing] <= ground[standing] * (1 + 1e-6)).all()


def test_domains_differ():
    # the source paints every image its own road (SYNTHIA's randomised renders), saturated; the target photographs
    # one grey road in varying light
    spread = {d: np.std([rgb[labels == 0].mean(0) for rgb, labels, _ in scenes(d) if (labels == 0).any()], 0).max()
              for d in DOMAINS}
    assert spread['source'] > 1.5 * spread['target'], spread
    # fully randomised (source_variety 1), every image has its own sky as well
    varied = ToyConfig(size=(48, 96), source_variety=1.)
    sky = {d: np.std([rgb[labels == 4].mean(0) for rgb, labels, _ in scenes(d, varied) if (labels == 4).any()], 0).max()
           for d in DOMAINS}
    assert sky['source'] > 1.5 * sky['target'], sky
    chroma = {d: np.mean([np.ptp(rgb.astype(float), -1).mean() for rgb, _, _ in scenes(d)]) for d in DOMAINS}
    assert chroma['source'] > 1.5 * chroma['target']
    assert SMALL.camera('source') != SMALL.camera('target')


def test_make_toy_pair_layouts(tmp_path):
    source, target = make_toy_pair(tmp_path, TINY)
    assert source == tmp_path / config_key(TINY) / 'synthia' and target.name == 'cityscapes'
    to_train = lookup_table(get_protocol(7).synthia)
    assert sorted(p.name for p in (source / 'RGB').iterdir()) == ['0000000.png', '0000001.png', '0000002.png']
    for i in range(TINY.n_source):
        name = f'{i:07d}.png'
        rgb, labels, depth = render_scene(scene_rng(TINY.seed, 'source', i), TINY, 'source')
        np.testing.assert_array_equal(read(source / 'RGB' / name)[..., ::-1], rgb)
        gt = read(source / 'GT' / 'LABELS' / name)
        assert gt.dtype == np.uint16 and gt.shape == (32, 64, 3)
        np.testing.assert_array_equal(to_train[gt[..., 2]], labels)  # class in R, the last channel of BGR
        assert gt[..., 1][labels >= 5].min() > 0 and (gt[..., 1][labels == 4] == 0).all()  # instance ids
        d = read(source / 'Depth' / 'Depth' / name)
        assert d.dtype == np.uint16 and d.shape == (32, 64, 3) and (d == d[..., :1]).all()
        np.testing.assert_array_equal(d[..., 0], np.clip(np.round(depth.astype(np.float64) * 100), 0, 65535))
        assert (d[..., 0][labels == 4] == 65535).all()
    cat = lookup_table(CITYSCAPES_CATEGORY)
    for split, n in (('train', TINY.n_target_train), ('val', TINY.n_target_val)):
        images = sorted((target / 'leftImg8bit' / split).glob('*/*_leftImg8bit.png'))
        assert len(images) == n
        for i in range(n):
            rgb, labels, _ = render_scene(scene_rng(TINY.seed, 'target', i, split), TINY, 'target')
            path, = (target / 'leftImg8bit' / split).glob(f'*/*_{i:06d}_000019_leftImg8bit.png')
            np.testing.assert_array_equal(read(path)[..., ::-1], rgb)
            city, stem = path.parent.name, path.name[:-len('_leftImg8bit.png')]
            ids = read(target / 'gtFine' / split / city / f'{stem}_gtFine_labelIds.png')
            assert ids.dtype == np.uint8 and ids.ndim == 2
            np.testing.assert_array_equal(cat[ids], labels)
    for split, n in (('train', TINY.n_target_train), ('val', TINY.n_target_val)):  # the target's depth, as
        paths = sorted((target / 'disparity' / split).glob('*/*_disparity.png'))  # Cityscapes ships it
        assert len(paths) == n
        for i, path in enumerate(sorted(paths, key=lambda p: p.name.split('_')[1])):
            _, _, depth = render_scene(scene_rng(TINY.seed, 'target', i, split), TINY, 'target')
            disp = read(path)
            assert disp.dtype == np.uint16 and disp.ndim == 2
            np.testing.assert_array_equal(disp, disparity_png(depth, TINY.camera('target')))
    assert (source.parent / '.complete').is_file()


def test_make_toy_pair_reuses_and_regenerates(tmp_path):
    source, _ = make_toy_pair(tmp_path, TINY)
    probe = source / 'RGB' / '0000000.png'
    before = probe.stat()
    assert make_toy_pair(tmp_path, TINY)[0] == source
    after = probe.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # not rewritten
    (source.parent / '.complete').unlink()  # as if interrupted
    make_toy_pair(tmp_path, TINY)
    assert probe.stat().st_ino != before.st_ino and (source.parent / '.complete').is_file()
    assert [p.name for p in tmp_path.iterdir()] == [source.parent.name]  # no leftovers
    assert toy_specs(tmp_path, TINY) == (f'synthia:{source}', f'cityscapes:{source.parent / "cityscapes"}')


def test_config_key_and_default_root(monkeypatch, tmp_path):
    assert config_key(TINY) == config_key(ToyConfig(size=(32, 64), n_source=3, n_target_train=2,
                                                    n_target_val=2, seed=3))
    assert config_key(TINY) != config_key(ToyConfig(size=(32, 64), n_source=3, n_target_train=2,
                                                    n_target_val=2, seed=3, visibility=50.0))
    monkeypatch.setenv('DADA_FASTAI_CACHE', str(tmp_path))
    assert default_root() == tmp_path / 'toy'
    with pytest.raises(ValueError):
        TINY.camera('real')


def test_the_cache_follows_dada_fastai_cache_then_xdg_cache_home_then_home(monkeypatch, tmp_path):
    from dada_fastai.storage import cache_dir
    monkeypatch.delenv('DADA_FASTAI_CACHE', raising=False)
    monkeypatch.setenv('HOME', str(tmp_path / 'home'))
    monkeypatch.delenv('XDG_CACHE_HOME', raising=False)
    assert default_root() == tmp_path / 'home' / '.cache' / 'dada_fastai' / 'toy'
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
    assert default_root() == tmp_path / 'xdg' / 'dada_fastai' / 'toy'
    assert cache_dir('warm_start') == tmp_path / 'xdg' / 'dada_fastai' / 'warm_start'
    monkeypatch.setenv('XDG_CACHE_HOME', 'relative/path')  # not absolute: ignored, as the XDG specification says
    assert default_root() == tmp_path / 'home' / '.cache' / 'dada_fastai' / 'toy'
    monkeypatch.setenv('DADA_FASTAI_CACHE', str(tmp_path / 'own'))
    assert default_root() == tmp_path / 'own' / 'toy' and cache_dir('warm_start') == tmp_path / 'own' / 'warm_start'


def test_readers_accept_the_pair(tmp_path):
    source, target = make_toy_pair(tmp_path, TINY)
    synthia = datasets.open_dataset(f'synthia:{source}', n_classes=7)
    items = synthia.samples('train')
    assert len(items) == TINY.n_source
    _, labels, depth = render_scene(scene_rng(TINY.seed, 'source', 0), TINY, 'source')
    np.testing.assert_array_equal(synthia.read_label(items[0]), labels)
    depth_cm = np.clip(np.round(depth.astype(np.float64) * 100), 0, 65535)
    np.testing.assert_allclose(synthia.read_depth(items[0]), datasets.inverse_depth_cm(depth_cm))
    cityscapes = datasets.open_dataset(f'cityscapes:{target}', n_classes=7)
    assert cityscapes.has_depth  # for the depth metrics: disparity = baseline x focal / depth
    _, _, depth_t = render_scene(scene_rng(TINY.seed, 'target', 0, 'train'), TINY, 'target')
    disp = cityscapes.read_depth(cityscapes.samples('train')[0])
    cam = TINY.camera('target')
    ok = depth_t < SKY_DEPTH
    np.testing.assert_allclose(disp[ok], STEREO_BASELINE * cam.f / depth_t[ok], atol=1 / 256)
    assert np.isnan(disp[~ok]).all()
    for split, n in (('train', TINY.n_target_train), ('val', TINY.n_target_val)):
        items = cityscapes.samples(split)
        assert len(items) == n and all(s.label is not None for s in items)
        assert cityscapes.read_label(items[0]).max() <= 6


def _colours_of(material: str, cfg: ToyConfig, domain: str = 'source', n: int = 12) -> np.ndarray:
    """Mean colour of `material` in each of the first `n` scenes where it shows."""
    from dada_fastai.toy import _render
    out = []
    for i in range(n):
        rgb, g = _render(scene_rng(cfg.seed, domain, i), cfg, domain)
        mask = g.material == list(MATERIALS).index(material)
        if mask.sum() > 4:
            out.append(rgb[mask].mean(0))
    return np.array(out)


def test_source_colours_vary_per_object_and_image_as_synthia_rand():
    varied = _colours_of('car', SMALL)
    flat = _colours_of('car', ToyConfig(size=(48, 96), source_variety=0))
    assert varied.std(0).max() > 3 * flat.std(0).max() + 10  # a car's colour says little about its class
    roads = _colours_of('road', SMALL)
    assert roads.std(0).max() > 10
    assert _colours_of('road', ToyConfig(size=(48, 96), source_variety=1.)).std(0).max() > 20  # fully randomised


def test_source_palette_has_the_targets_hues_rendered_brighter_and_more_saturated():
    from skimage.color import rgb2hsv
    from dada_fastai.toy import SOURCE_PALETTE, TARGET_PALETTE
    src, tgt = rgb2hsv(SOURCE_PALETTE[None])[0], rgb2hsv(TARGET_PALETTE[None])[0]
    hue_gap = np.abs((src[:, 0] - tgt[:, 0] + 0.5) % 1 - 0.5)
    assert hue_gap.max() < 1e-3  # grey roads and green trees in both, as SYNTHIA and Cityscapes
    assert (src[:, 1] >= tgt[:, 1]).all() and (src[:, 2] >= tgt[:, 2]).all() and src[:, 1].mean() > 1.5 * tgt[:, 1].mean()


def test_source_viewpoints_are_random_and_the_target_camera_fixed():
    rng = lambda i, d: scene_rng(SMALL.seed, d, i)
    source = {SMALL.camera('source', rng(i, 'source')) for i in range(6)}
    target = {SMALL.camera('target', rng(i, 'target')) for i in range(6)}
    assert len(source) == 6 and len(target) == 1
    assert min(c.height for c in source) < SMALL.source_height < max(c.height for c in source)
    assert ToyConfig(source_camera_spread=0).camera('source', rng(0, 'source')) == ToyConfig().camera('source')


def test_the_source_has_one_lens_as_synthia_unless_its_fov_is_drawn_too():
    # SYNTHIA renders every viewpoint with one focal length (532.74 px at 1280 wide); toy v7 drew the lens per image
    rng = lambda i: scene_rng(SMALL.seed, 'source', i)
    one_lens = [SMALL.camera('source', rng(i)) for i in range(6)]
    assert {c.fov for c in one_lens} == {SMALL.source_fov} and len({c.horizon for c in one_lens}) == 6
    drawn = [dataclasses.replace(SMALL, source_fov_spread=1.).camera('source', rng(i)) for i in range(6)]
    assert len({c.fov for c in drawn}) == 6 and all(60 <= c.fov <= 100 for c in drawn)
    # the lens's draw is made either way, so that the viewpoints, and the scenes drawn after them, are the same
    assert [(c.height, c.horizon) for c in drawn] == [(c.height, c.horizon) for c in one_lens]
    after = []
    for cfg in (SMALL, dataclasses.replace(SMALL, source_fov_spread=1.)):
        r = rng(0)
        cfg.camera('source', r)
        after.append(r.bit_generator.state)
    assert after[0] == after[1]
    # a fixed viewpoint with a drawn lens: only the field of view moves
    lens_only = dataclasses.replace(SMALL, source_camera_spread=0., source_fov_spread=1.)
    cams = [lens_only.camera('source', rng(i)) for i in range(6)]
    assert {(c.height, c.horizon) for c in cams} == {(SMALL.source_height, SMALL.source_horizon)}
    assert len({c.fov for c in cams}) == 6


def test_the_target_height_and_horizon_are_among_the_source_viewpoints_its_lens_narrower():
    # SYNTHIA-RAND's random viewpoints include street-level ones: the target's fixed camera lies inside the range of
    # the source's random heights and horizons (what differs is the distribution, not its support); its lens is
    # narrower than the source's one lens, as Cityscapes' (49 degrees) is narrower than SYNTHIA's (100)
    cfg = ToyConfig()
    source = [cfg.camera('source', scene_rng(cfg.seed, 'source', i)) for i in range(400)]
    target = cfg.camera('target')
    assert target.fov < min(c.fov for c in source)
    for attr in ('height', 'horizon'):
        values = [getattr(c, attr) for c in source]
        assert min(values) < getattr(target, attr) < max(values), attr
    assert abs(np.median([c.height for c in source]) - target.height) > 0.3  # the camera gap stays
