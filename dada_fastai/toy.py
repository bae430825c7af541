"""A procedural synthetic-to-real toy domain pair: street scenes with exact depth in the 7-class protocol.

One random world (street, buildings, poles, signs, trees, people, vehicles) is rasterised by a pinhole camera
into per-pixel surface attributes (material, object, depth, surface coordinates), then shaded twice:
'source' looks like a game engine's randomised renders (every object its own colour and texture, crisp; written as
SYNTHIA-RAND-CITYSCAPES with depth), 'target' like a hazy, textured, blurred photograph from another camera
(written as Cityscapes, with its depth as Cityscapes ships it: 16-bit disparity, for the depth metrics only).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from itertools import count
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike
from skimage.color import hsv2rgb, rgb2hsv
from skimage.draw import ellipse, polygon
from skimage.filters import gaussian
from skimage.transform import resize

from .datasets import write_cityscapes_sample, write_synthia_sample
from .storage import cache_dir
from .protocols import get_protocol, lookup_table

__all__ = ['SKY_DEPTH', 'MATERIALS', 'SYNTHIA_ID', 'CITYSCAPES_ID', 'TRAIN_ID', 'ToyConfig', 'Camera', 'render_scene',
           'scene_rng', 'make_toy_pair', 'config_key', 'default_root', 'toy_specs']

SKY_DEPTH = 1000.0  # metres; stored as 65535 cm, the 16-bit maximum
GROUND_EXTENT = 400.0  # the ground plane ends here (sky beyond)
NEAR = 1.0  # near clipping distance of building walls, metres
DOMAINS = ('source', 'target')
SPLITS = ('train', 'val')
CITIES = {'train': ('toyburg', 'toyhausen'), 'val': ('toyfurt',)}

# Surface materials, a refinement of the classes: name -> (SYNTHIA class id, Cityscapes labelId)
MATERIALS = {
    'sky': (1, 23), 'road': (3, 7), 'lane': (22, 7), 'sidewalk': (4, 8), 'building': (2, 11),
    'pole': (7, 17), 'sign': (9, 20), 'light': (15, 19), 'foliage': (6, 21), 'trunk': (6, 21),
    'skin': (10, 24), 'clothes': (10, 24), 'trousers': (10, 24), 'car': (8, 26), 'glass': (8, 26),
    'tyre': (8, 26),
}
_M = {name: i for i, name in enumerate(MATERIALS)}
# material index -> SYNTHIA class id, Cityscapes labelId and 7-class train id
SYNTHIA_ID = np.array([s for s, _ in MATERIALS.values()], np.uint16)
CITYSCAPES_ID = np.array([c for _, c in MATERIALS.values()], np.uint8)
TRAIN_ID = lookup_table(get_protocol(7).synthia)[SYNTHIA_ID]


def _palette(colours: dict[str, tuple[int, int, int]]) -> np.ndarray:
    """Per-material RGB in [0, 1], in MATERIALS order."""
    return np.array([colours[name] for name in MATERIALS], np.float32) / 255


def _rendered(palette: np.ndarray, saturation: float, value: float) -> np.ndarray:
    """`palette` with the same hues, its saturation and brightness multiplied (clipped to [0, 1])."""
    hsv = rgb2hsv(palette[None])[0]
    hsv[:, 1:] = np.clip(hsv[:, 1:] * (saturation, value), 0, 1)
    return hsv2rgb(hsv[None])[0].astype(np.float32)


# Target: muted, photographic colours; source: the same hues as a game engine renders them, saturated and brighter
# (SYNTHIA's roads are grey and its trees green, as Cityscapes'; what differs is the rendering)
TARGET_PALETTE = _palette({
    'sky': (175, 190, 205), 'road': (92, 90, 88), 'lane': (205, 200, 185), 'sidewalk': (178, 170, 158),
    'building': (150, 140, 128), 'pole': (85, 90, 88), 'sign': (45, 85, 160), 'light': (45, 45, 40),
    'foliage': (75, 100, 45), 'trunk': (70, 58, 45), 'skin': (195, 155, 125), 'clothes': (80, 78, 85),
    'trousers': (55, 55, 65), 'car': (120, 120, 125), 'glass': (45, 50, 58), 'tyre': (28, 28, 28)})
SOURCE_PALETTE = _rendered(TARGET_PALETTE, saturation=1.8, value=1.15)
# Target per-object colour spread (log scale), fine grain and blotches per material
_VARIETY, _FINE, _COARSE = (np.array([d.get(name, 0.0) for name in MATERIALS], np.float32) for d in (
    {'building': 0.2, 'clothes': 0.6, 'trousers': 0.4, 'car': 0.7, 'foliage': 0.15, 'sign': 0.3, 'pole': 0.1},
    {'road': 0.05, 'sidewalk': 0.04, 'building': 0.05, 'foliage': 0.3, 'trunk': 0.1, 'lane': 0.1},
    {'road': 0.04, 'sidewalk': 0.04, 'building': 0.08, 'foliage': 0.25}))
# Light per face: ground, facing the camera, left wall, right wall, sky
_SOURCE_LIGHT = np.array([1.0, 0.95, 0.75, 0.88, 1.0], np.float32)
_TARGET_LIGHT = np.array([1.0, 0.85, 1.15, 0.6, 1.0], np.float32)


@dataclass(frozen=True)
class Camera:
    """A level pinhole camera `height` metres above the ground, looking down the street (+z); x right, y up."""
    size: tuple[int, int]
    height: float
    fov: float  # horizontal field of view, degrees
    horizon: float  # horizon row as a fraction of the image height (a shifted principal point)

    @property
    def f(self) -> float:
        """Focal length in pixels."""
        return self.size[1] / 2 / np.tan(np.radians(self.fov) / 2)

    @property
    def cx(self) -> float:
        """Column of the optical axis (pixel centres are at integer coordinates)."""
        return (self.size[1] - 1) / 2

    @property
    def cy(self) -> float:
        """Row of the horizon."""
        return self.horizon * self.size[0] - 0.5

    def project(self, x: ArrayLike, y: ArrayLike, z: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        """World points (metres) -> (rows, cols)."""
        z = np.asarray(z, np.float64)
        return self.cy + self.f * (self.height - np.asarray(y)) / z, self.cx + self.f * np.asarray(x) / z

    def ground_depth(self) -> np.ndarray:
        """(H, 1) depth of the ground plane per row; inf at and above the horizon."""
        dv = np.arange(self.size[0], dtype=np.float64)[:, None] - self.cy
        with np.errstate(divide='ignore'):
            return np.where(dv > 0, self.f * self.height / dv, np.inf)


@dataclass(frozen=True)
class ToyConfig:
    """All knobs of the toy pair (the output folder's name hashes them)."""
    size: tuple[int, int] = (96, 192)  # (H, W) of both domains as stored
    n_source: int = 200
    n_target_train: int = 200
    n_target_val: int = 50
    seed: int = 0
    source_height: float = 1.8  # camera height, metres (drawn per image around it: 1.1 to 3 m)
    source_fov: float = 90.0  # horizontal field of view, degrees: one lens for every image, as SYNTHIA's
    source_horizon: float = 0.5  # horizon row / image height
    target_height: float = 1.3
    target_fov: float = 70.0
    target_horizon: float = 0.4
    visibility: float = 400.0  # target haze: at this depth 63% of a colour is haze (Cityscapes' clear days)
    texture: float = 1.0  # strength of the target textures
    noise: float = 0.025  # target grain, standard deviation in [0, 1] intensity
    blur: float = 0.7  # target Gaussian blur, sigma in pixels
    source_variety: float = 0.3  # source colour and texture randomisation per object and image (0: flat colours)
    source_camera_spread: float = 1.0  # source viewpoints (height, horizon) drawn per image around the configured
                                       # ones (0: fixed)
    source_fov_spread: float = 0.0  # source fields of view drawn per image around source_fov (1: 60 to 100 degrees;
                                    # toy v7 drew them so)

    def camera(self, domain: str, rng: np.random.Generator | None = None) -> Camera:
        """The camera of 'source' or 'target'. Given `rng`, a source camera is drawn at random around the
        configured one (`source_camera_spread`), as SYNTHIA-RAND's random viewpoints, through one lens (as SYNTHIA's
        single focal length, unless `source_fov_spread`); the target's is fixed, as a car's."""
        if domain not in DOMAINS:
            raise ValueError(f'unknown domain {domain!r}; valid: {DOMAINS}')
        p = domain + '_'
        height, fov, horizon = (getattr(self, p + k) for k in ('height', 'fov', 'horizon'))
        spread, lens = self.source_camera_spread, self.source_fov_spread
        if domain == 'source' and rng is not None and (spread > 0 or lens > 0):
            up, zoom, tilt = rng.uniform(-0.5, 0.5), rng.uniform(-0.4, 0.1), rng.uniform(-0.15, 0.1)
            if spread > 0:
                height = float(height * np.exp(up * spread))
                horizon = float(np.clip(horizon + tilt * spread, 0.2, 0.8))
            if lens > 0:
                fov = float(np.clip(fov * np.exp(zoom * lens), 30, 120))
        return Camera(tuple(self.size), height, fov, horizon)


@dataclass
class _GBuffer:
    """Per-pixel surface attributes: material, object id, depth (m), face and surface coordinates s, t (m)."""
    material: np.ndarray
    inst: np.ndarray
    depth: np.ndarray
    face: np.ndarray  # 0 ground, 1 facing the camera, 2 left wall, 3 right wall, 4 sky
    s: np.ndarray
    t: np.ndarray

    @classmethod
    def sky(cls, size: tuple[int, int]) -> _GBuffer:
        """An empty world: sky everywhere."""
        rows, cols = np.mgrid[:size[0], :size[1]].astype(np.float32)
        return cls(np.full(size, _M['sky'], np.uint8), np.zeros(size, np.uint16),
                   np.full(size, SKY_DEPTH, np.float32), np.full(size, 4, np.uint8), cols, rows)

    def paint(self, rr: np.ndarray, cc: np.ndarray, depth: ArrayLike, material: ArrayLike, inst: ArrayLike,
              face: ArrayLike, s: ArrayLike, t: ArrayLike) -> None:
        """Write the pixels (rr, cc) that are not behind what is already there."""
        depth = np.broadcast_to(np.asarray(depth, np.float32), rr.shape)
        keep = depth <= self.depth[rr, cc]
        rr, cc = rr[keep], cc[keep]
        for name, value in (('depth', depth), ('material', material), ('inst', inst), ('face', face),
                            ('s', s), ('t', t)):
            getattr(self, name)[rr, cc] = np.broadcast_to(value, keep.shape)[keep]


def _on_plane(rr: np.ndarray, cc: np.ndarray, z: float, cam: Camera) -> tuple:
    """Depth, face and surface coordinates (x, y) of pixels on the plane Z = z facing the camera."""
    return rr, cc, z, 1, (cc - cam.cx) * z / cam.f, cam.height - (rr - cam.cy) * z / cam.f


@dataclass(frozen=True)
class _Polygon:
    """A polygon in the plane Z = z facing the camera; vertices (xs, ys) in metres, y up from the ground."""
    material: str
    inst: int
    z: float
    xs: tuple[float, ...]
    ys: tuple[float, ...]

    @property
    def far(self) -> float:
        """Depth that orders the painting (farthest first)."""
        return self.z

    def raster(self, cam: Camera) -> tuple:
        """Pixels (rr, cc), depth, face and surface coordinates seen by `cam`."""
        return _on_plane(*polygon(*cam.project(self.xs, self.ys, self.z), shape=cam.size), self.z, cam)


@dataclass(frozen=True)
class _Ellipse:
    """An ellipse in the plane Z = z facing the camera, centre (x, y) and radii (rx, ry) in metres."""
    material: str
    inst: int
    z: float
    x: float
    y: float
    rx: float
    ry: float

    @property
    def far(self) -> float:
        """Depth that orders the painting (farthest first)."""
        return self.z

    def raster(self, cam: Camera) -> tuple:
        """Pixels (rr, cc), depth, face and surface coordinates seen by `cam`."""
        r, c = cam.project(self.x, self.y, self.z)
        s = cam.f / self.z
        return _on_plane(*ellipse(r, c, self.ry * s, self.rx * s, shape=cam.size), self.z, cam)


@dataclass(frozen=True)
class _Wall:
    """A building wall along the street: the plane X = x from depth z0 to z1, `height` metres tall."""
    material: str
    inst: int
    x: float
    z0: float
    z1: float
    height: float

    @property
    def far(self) -> float:
        """Depth that orders the painting: everything this wall can hide is nearer than its far end."""
        return self.z1

    def raster(self, cam: Camera) -> tuple:
        """Pixels (rr, cc), depth (from the column), face and surface coordinates (z, y) seen by `cam`."""
        zs, ys = (self.z0, self.z0, self.z1, self.z1), (0, self.height, self.height, 0)
        rr, cc = polygon(*cam.project(self.x, ys, zs), shape=cam.size)
        z = np.clip(cam.f * abs(self.x) / (np.abs(cc - cam.cx) + 1e-9), self.z0, self.z1)  # column -> depth
        return rr, cc, z, 2 if self.x < 0 else 3, z, cam.height - (rr - cam.cy) * z / cam.f


@dataclass
class _World:
    """A street: road half-width, sidewalk width, an optional zebra crossing and the standing parts."""
    road: float
    walk: float
    crossing: float | None
    parts: list = field(default_factory=list)


def _box(material: str, inst: int, z: float, x0: float, x1: float, y0: float, y1: float) -> _Polygon:
    """An axis-aligned rectangle in the plane Z = z."""
    return _Polygon(material, inst, z, (x0, x1, x1, x0), (y0, y0, y1, y1))


def _tree(i: int, x: float, z: float, rng: np.random.Generator) -> list:
    """A trunk and a round crown."""
    trunk, r = rng.uniform(1.8, 3.0), rng.uniform(1.5, 3.0)
    return [_box('trunk', i, z, x - 0.2, x + 0.2, 0, trunk + r),
            _Ellipse('foliage', i, z, x, trunk + r * 0.8, r, r * rng.uniform(1.0, 1.5))]


def _pole(i: int, x: float, z: float, rng: np.random.Generator) -> list:
    """A pole, perhaps with a round or triangular sign or a traffic light on top."""
    h, r, kind = rng.uniform(3.5, 7), rng.uniform(0.6, 1.0), rng.integers(4)
    top = {0: [_Ellipse('sign', i, z, x, h - r, r, r)],
           1: [_Polygon('sign', i, z, (x - r, x + r, x), (h, h, h - 1.6 * r))],
           2: [_box('light', i, z, x - 0.4, x + 0.4, h - 1.6, h)]}.get(kind, [])
    return [_box('pole', i, z, x - 0.25, x + 0.25, 0, h)] + top


def _person(i: int, x: float, z: float, rng: np.random.Generator) -> list:
    """Two legs, a torso with its arms and a head, facing the camera."""
    h, stride = rng.uniform(1.6, 2.0), rng.uniform(0, 0.15)
    r, hip = 0.065 * h, 0.5 * h
    shoulder = h - 2 * r
    return [_Polygon('trousers', i, z, (x - 0.19, x - 0.02, x - 0.05 + stride, x - 0.19 - stride), (hip, hip, 0, 0)),
            _Polygon('trousers', i, z, (x + 0.02, x + 0.19, x + 0.19 + stride, x + 0.05 - stride), (hip, hip, 0, 0)),
            _Polygon('clothes', i, z, (x - 0.2, x + 0.2, x + 0.25, x - 0.25), (hip, hip, shoulder, shoulder)),
            _Polygon('clothes', i, z, (x - 0.25, x - 0.36, x - 0.4, x - 0.29), (shoulder, shoulder, hip, hip)),
            _Polygon('clothes', i, z, (x + 0.25, x + 0.36, x + 0.4, x + 0.29), (shoulder, shoulder, hip, hip)),
            _Ellipse('skin', i, z, x, h - r, 0.8 * r, r)]


def _vehicle(i: int, x: float, z: float, rng: np.random.Generator) -> list:
    """A car (body, cabin, rear window) or a van, seen from behind."""
    van = rng.random() < 0.2
    hw, h = (rng.uniform(1.0, 1.25), rng.uniform(2.3, 3.3)) if van else (rng.uniform(0.85, 1.0), rng.uniform(1.35, 1.6))
    tyres = [_box('tyre', i, z, x - hw, x - hw + 0.3, 0, 0.4), _box('tyre', i, z, x + hw - 0.3, x + hw, 0, 0.4)]
    if van:
        return tyres + [_box('car', i, z, x - hw, x + hw, 0.3, h),
                        _box('glass', i, z, x - 0.6 * hw, x + 0.6 * hw, 0.7 * h, 0.9 * h)]
    top = 0.58 * h
    return tyres + [
        _box('car', i, z, x - hw, x + hw, 0.25, top),
        _Polygon('car', i, z, (x - 0.95 * hw, x + 0.95 * hw, x + 0.7 * hw, x - 0.7 * hw), (top, top, h, h)),
        _Polygon('glass', i, z, (x - 0.8 * hw, x + 0.8 * hw, x + 0.62 * hw, x - 0.62 * hw),
                 (top + 0.06, top + 0.06, h - 0.07, h - 0.07))]


def _sample_world(rng: np.random.Generator) -> _World:
    """A random street layout; the same distribution for both domains."""
    w = _World(road=rng.uniform(3.5, 7.0), walk=rng.uniform(2.0, 4.5),
               crossing=rng.uniform(8, 30) if rng.random() < 0.3 else None)
    ids, add = count(1), w.parts.extend
    for side in (-1, 1):
        edge, z = w.road + w.walk, rng.uniform(-10, 6)
        while z < 140:  # a row of buildings with some gaps: the wall along the street and the front
            length = rng.uniform(8, 35)
            if rng.random() < 0.85:
                x, h, i = side * (edge + rng.uniform(0, 2.5)), rng.uniform(6, 28), next(ids)
                if z + length > NEAR:
                    add([_Wall('building', i, x, max(z, NEAR), z + length, h)])
                if z > NEAR:
                    add([_box('building', i, z, x, x + side * rng.uniform(8, 20), 0, h)])
            z += length + (rng.uniform(3, 15) if rng.random() < 0.3 else 0)
        for _ in range(rng.poisson(5)):
            add(_tree(next(ids), side * (w.road + w.walk * rng.uniform(0.4, 0.8)), rng.uniform(3, 90), rng))
        for _ in range(rng.poisson(3)):  # bushes and hedges along the buildings
            x, z, r = side * (edge - rng.uniform(0.3, 1.0)), rng.uniform(3, 90), rng.uniform(0.8, 2.0)
            add([_Ellipse('foliage', next(ids), z, x, r * 0.4, r, r * 0.6)])
        for _ in range(1 + rng.poisson(1.5)):
            add(_pole(next(ids), side * (w.road + rng.uniform(0.3, 0.8)), rng.uniform(3, 30), rng))
    # people and vehicles crowd the near street, as in SYNTHIA-RAND's random views
    for _ in range(1 + rng.poisson(4)):  # people, alone or in small groups, mostly on the sidewalks
        side = rng.choice((-1, 1))
        x = side * (w.road + w.walk * rng.uniform(0.1, 0.9)) if rng.random() < 0.8 else rng.uniform(-w.road, w.road)
        z = rng.uniform(2.5, 14)
        for k in range(rng.integers(1, 4)):
            add(_person(next(ids), x + k * rng.uniform(0.6, 1.0) * side, z + rng.uniform(-0.5, 1.5) * k, rng))
    for _ in range(rng.poisson(4)):  # vehicles, parked or driving
        side = rng.choice((-1, 1))
        x = side * (w.road - 1.2) if rng.random() < 0.4 else side * w.road * rng.uniform(0.25, 0.6)
        add(_vehicle(next(ids), x, rng.uniform(4, 40), rng))
    for _ in range(rng.integers(1, 6)):  # a far skyline
        x, z = rng.uniform(-150, 150), rng.uniform(150, 300)
        add([_box('building', next(ids), z, x - rng.uniform(10, 30), x + rng.uniform(10, 30), 0, rng.uniform(15, 60))])
    return w


def _rasterise(w: _World, cam: Camera) -> _GBuffer:
    """The ground, then the parts back to front with their exact depth (a depth test guards ties)."""
    g = _GBuffer.sky(cam.size)
    z_row = cam.ground_depth()[:, 0]
    rows = np.flatnonzero(z_row <= GROUND_EXTENT)
    rr, cc = (a.ravel() for a in np.meshgrid(rows, np.arange(cam.size[1]), indexing='ij'))
    z = z_row[rr]
    x = (cc - cam.cx) * z / cam.f
    ax = np.abs(x)
    lane = (ax < 0.08) & (z % 9 < 4) | (np.abs(ax - w.road + 0.3) < 0.08)
    if w.crossing is not None:
        lane |= (z > w.crossing) & (z < w.crossing + 3) & (x % 1.2 < 0.6)
    material = np.where(ax < w.road, np.where(lane, _M['lane'], _M['road']), _M['sidewalk'])
    g.paint(rr, cc, z, material, 0, 0, x, z)
    for part in sorted(w.parts, key=lambda p: -p.far):
        rr, cc, depth, face, s, t = part.raster(cam)
        g.paint(rr, cc, depth, _M[part.material], part.inst, face, s, t)
    return g


def _to_uint8(rgb: np.ndarray) -> np.ndarray:
    """Colours in [0, 1] (clipped) -> uint8 RGB."""
    return np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def _shade_source(g: _GBuffer, cfg: ToyConfig, rng: np.random.Generator) -> np.ndarray:
    """A game engine's look: crisp, saturated, lit by face and darker with distance, no haze, blur or grain.
    With `cfg.source_variety` > 0, as SYNTHIA's randomised renders, every object gets its own colour and
    texture and every image its own light, so that a class cannot be told by its colour alone; at 0 every
    material has one flat colour."""
    dim = np.where(g.face == 4, 1.0, 0.6 + 0.4 * np.exp(-g.depth / 120))
    v = cfg.source_variety
    if v <= 0:
        rgb = SOURCE_PALETTE[g.material] * (_SOURCE_LIGHT[g.face] * dim)[..., None]
        return _to_uint8(rgb)
    size, mat = g.material.shape, g.material
    n = int(g.inst.max()) + 1
    # a random colour per object, drawn around the material's; the ground and sky per image
    base = SOURCE_PALETTE[mat]
    tint = np.exp(v * (0.6 * rng.standard_normal((n, 3)) + 0.35 * rng.standard_normal((n, 1))))
    tint[0] = np.exp(v * (0.35 * rng.standard_normal(3) + 0.2 * rng.standard_normal()))
    per_mat = np.exp(0.5 * v * rng.standard_normal((len(MATERIALS), 3)))  # this image's palette
    rgb = base * per_mat[mat] * tint[g.inst]
    sat = rng.uniform(1 - v * 0.85, 1, n)[g.inst][..., None]  # from saturated to grey, per object
    rgb = rgb.mean(-1, keepdims=True) * (1 - sat) + rgb * sat
    # random procedural textures: grain, blotches and stripes along the surface coordinates
    freq = rng.uniform(0.5, 3.0, n)
    stripes = np.sin(g.s * freq[g.inst] * np.pi) * (rng.random(n) < 0.4)[g.inst]
    texture = 0.08 * rng.standard_normal(size) + 0.12 * _noise(rng, size, 4) + 0.1 * stripes
    rgb *= (1 + v * texture)[..., None]
    windows = (mat == _M['building']) & (np.abs(g.s % 3.0 - 1.5) < 0.6) & (np.abs(g.t % 3.3 - 1.6) < 0.7) & (g.t > 2)
    rgb[windows] = rng.uniform(0.1, 0.9, 3)
    light = rng.uniform(0.55, 1.1, 5)
    light[[0, 4]] = 1.0
    sky = mat == _M['sky']
    rgb = rgb * (light[g.face] * dim)[..., None]
    pale = rng.uniform(0, v)  # from a deep blue to an overcast white sky
    sky_rgb = SOURCE_PALETTE[_M['sky']] * per_mat[_M['sky']] * (1 - pale) + pale * rng.uniform(0.75, 0.95)
    rgb[sky] = (sky_rgb * (0.8 + 0.2 * g.t / size[0])[..., None])[sky]
    return _to_uint8(rgb)


def _noise(rng: np.random.Generator, size: tuple[int, int], cell: int) -> np.ndarray:
    """Smooth standard-normal-ish noise with features of about `cell` pixels."""
    small = rng.standard_normal((size[0] // cell + 2, size[1] // cell + 2))
    return resize(small, size, order=3, mode='reflect', anti_aliasing=False)


def _shade_target(g: _GBuffer, cfg: ToyConfig, rng: np.random.Generator) -> np.ndarray:
    """Photographic look: varied object colours, textures, sunlight, haze, vignetting, blur and grain."""
    size, mat = g.material.shape, g.material
    n = int(g.inst.max()) + 1
    tint = 0.5 * rng.standard_normal((n, 3)) + rng.standard_normal((n, 1))  # hue and brightness per object
    tint[0] = 0
    rgb = TARGET_PALETTE[mat] * np.exp(_VARIETY[mat][..., None] * tint[g.inst])
    texture = _FINE[mat] * rng.standard_normal(size) + _COARSE[mat] * _noise(rng, size, 6)
    rgb *= 1 + cfg.texture * texture[..., None]
    # windows on the buildings, joints between the paving slabs
    s, t = g.s, g.t
    windows = (mat == _M['building']) & (np.abs(s % 3.2 - 1.7) < 0.7) & (np.abs(t % 3.1 - 1.65) < 0.65) & (t > 2)
    rgb[windows] = np.array([55, 65, 80]) / 255 * (1 + 0.3 * rng.random((windows.sum(), 1)))
    joints = (mat == _M['sidewalk']) & ((s % 1.0 < 0.08) | (t % 1.0 < 0.08))
    rgb[joints] *= 1 - 0.25 * cfg.texture
    # the sun lights one side of the street
    light = _TARGET_LIGHT[[0, 1, 3, 2, 4]] if rng.random() < 0.5 else _TARGET_LIGHT
    rgb *= light[g.face][..., None]
    # overcast sky: lighter towards the horizon, with clouds
    sky = mat == _M['sky']
    horizon = np.clip(g.t / (cfg.camera('target').cy + 1), 0, 1)[..., None]
    clouds = np.clip(_noise(rng, size, 10)[..., None] * 0.5, 0, 1)
    haze = TARGET_PALETTE[_M['sky']] * 1.1
    sky_rgb = (1 - horizon) * TARGET_PALETTE[_M['sky']] * [0.75, 0.85, 1.0] + horizon * haze
    rgb[sky] = (sky_rgb + clouds * (0.95 - sky_rgb))[sky]
    fog = (1 - np.exp(-g.depth / cfg.visibility))[..., None]
    rgb = np.where(sky[..., None], rgb, rgb * (1 - fog) + haze * fog)
    # camera: exposure, white balance, vignetting, optics blur, sensor grain
    rows, cols = np.mgrid[:size[0], :size[1]]
    r2 = ((rows / size[0] - 0.5) ** 2 + (cols / size[1] - 0.5) ** 2)[..., None]
    rgb *= rng.uniform(0.85, 1.1) * rng.uniform(0.92, 1.08, 3) * (1 - 0.5 * r2)
    rgb = gaussian(rgb, sigma=cfg.blur, channel_axis=-1) if cfg.blur > 0 else rgb
    rgb += cfg.noise * rng.standard_normal(rgb.shape)
    return _to_uint8(rgb)


def _render(rng: np.random.Generator, cfg: ToyConfig, domain: str) -> tuple[np.ndarray, _GBuffer]:
    """A random world seen and shaded as `domain`: (rgb, surface attributes)."""
    cam = cfg.camera(domain, rng)
    g = _rasterise(_sample_world(rng), cam)
    return (_shade_source(g, cfg, rng) if domain == 'source' else _shade_target(g, cfg, rng)), g


def render_scene(rng: np.random.Generator, cfg: ToyConfig, domain: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A random scene of `domain` ('source' or 'target'): (rgb uint8 HxWx3, 7-class train ids HxW, depth m HxW)."""
    rgb, g = _render(rng, cfg, domain)
    return rgb, TRAIN_ID[g.material], g.depth


def scene_rng(seed: int, domain: str, index: int, split: str = 'train') -> np.random.Generator:
    """The generator of image `index` of a domain and split, as make_toy_pair uses it."""
    return np.random.default_rng([seed, DOMAINS.index(domain), SPLITS.index(split), index])


def config_key(cfg: ToyConfig) -> str:
    """A folder name for `cfg`: size, seed and a short hash of all fields."""
    digest = hashlib.sha1(_config_json(cfg).encode()).hexdigest()[:10]
    return f'{cfg.size[0]}x{cfg.size[1]}_seed{cfg.seed}_{digest}'


TOY_VERSION = 8  # bumped whenever the rendering changes, so that caches of older renders are not reused


def _config_json(cfg: ToyConfig) -> str:
    """The config and the renderer's version as canonical JSON (the completion marker's content)."""
    return json.dumps({**asdict(cfg), 'version': TOY_VERSION}, sort_keys=True)


def default_root() -> Path:
    """The toy pair's folder in the package's cache (`storage.cache_dir`): $DADA_FASTAI_CACHE/toy, else
    $XDG_CACHE_HOME/dada_fastai/toy, else ~/.cache/dada_fastai/toy."""
    return cache_dir('toy')


STEREO_BASELINE = 0.209313  # metres, Cityscapes' stereo rig


def disparity_png(depth: np.ndarray, cam: Camera) -> np.ndarray:
    """Depth (m) -> Cityscapes' 16-bit disparity encoding p = 256 d + 1 (d = baseline f / depth, in pixels);
    the sky is invalid (0), as stereo matching leaves it in Cityscapes."""
    with np.errstate(divide='ignore'):
        disp = STEREO_BASELINE * cam.f / depth.astype(np.float64)
    p = np.clip(np.round(disp * 256 + 1), 1, 65535)
    return np.where(depth >= SKY_DEPTH, 0, p).astype(np.uint16)


def _write_pair(out: Path, cfg: ToyConfig) -> None:
    """Render and write every image of the pair under `out`."""
    for i in range(cfg.n_source):
        rgb, g = _render(scene_rng(cfg.seed, 'source', i), cfg, 'source')
        depth_cm = np.clip(np.round(g.depth.astype(np.float64) * 100), 0, 65535).astype(np.uint16)
        write_synthia_sample(out / 'synthia', f'{i:07d}.png', rgb, SYNTHIA_ID[g.material], depth_cm, g.inst,
                             layout='raw')
    for split, n in (('train', cfg.n_target_train), ('val', cfg.n_target_val)):
        cities = CITIES[split]
        for i in range(n):
            rgb, g = _render(scene_rng(cfg.seed, 'target', i, split), cfg, 'target')
            city = cities[i % len(cities)]
            write_cityscapes_sample(out / 'cityscapes', split, city, f'{city}_{i:06d}_000019', rgb,
                                    CITYSCAPES_ID[g.material], disparity_png(g.depth, cfg.camera('target')))


def make_toy_pair(root: str | Path | None = None, cfg: ToyConfig = ToyConfig(),
                  force: bool = False) -> tuple[Path, Path]:
    """Write (or reuse) the toy pair under <root>/<config_key(cfg)>; returns (SYNTHIA dir, Cityscapes dir)."""
    root = Path(root) if root is not None else default_root()
    out, spec = root / config_key(cfg), _config_json(cfg)
    marker = out / '.complete'
    if force or not marker.is_file() or marker.read_text() != spec:
        tmp = root / f'.{out.name}.{os.getpid()}.tmp'  # built aside, moved in when complete
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        _write_pair(tmp, cfg)
        (tmp / '.complete').write_text(spec)  # written last
        shutil.rmtree(out, ignore_errors=True)
        try:
            tmp.rename(out)
        except OSError:  # another process finished the same folder first
            shutil.rmtree(tmp, ignore_errors=True)
            if not marker.is_file():
                raise
    return out / 'synthia', out / 'cityscapes'


def toy_specs(root: str | Path | None = None, cfg: ToyConfig = ToyConfig(), force: bool = False) -> tuple[str, str]:
    """('synthia:<dir>', 'cityscapes:<dir>') of the toy pair, generated when needed."""
    source, target = make_toy_pair(root, cfg, force)
    return f'synthia:{source}', f'cityscapes:{target}'
