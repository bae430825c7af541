"""Tiny datasets in their publishers' exact on-disk layouts, with known content, for tests.

Written with OpenCV (explicit BGR order) and a hand-rolled palette-PNG encoder, independently of the package's
writers. Content is a deterministic function of (name, size, seed): `*_content` gives what a file holds.
The id mappings below are copied from the reference facts (section 4), not imported from the package.
"""
from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np

CLASSES16 = ('road', 'sidewalk', 'building', 'wall', 'fence', 'pole', 'light', 'sign', 'vegetation', 'sky',
             'person', 'rider', 'car', 'bus', 'motorcycle', 'bicycle')
CLASSES7 = ('flat', 'construction', 'object', 'nature', 'sky', 'human', 'vehicle')
SYNTHIA_TO_16 = {3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 1: 9, 10: 10, 17: 11, 8: 12, 19: 13,
                 12: 14, 11: 15}
SYNTHIA_TO_7 = {3: 0, 4: 0, 22: 0, 2: 1, 5: 1, 7: 2, 9: 2, 15: 2, 6: 3, 1: 4, 10: 5, 8: 6, 11: 6}
CITYSCAPES_TO_16 = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 23: 9, 24: 10, 25: 11, 26: 12,
                    28: 13, 32: 14, 33: 15}
# Cityscapes labelId -> categoryId - 1 (cityscapesScripts' labels.py); void (0..6) ignored
CITYSCAPES_TO_7 = {7: 0, 8: 0, 9: 0, 10: 0, 11: 1, 12: 1, 13: 1, 14: 1, 15: 1, 16: 1, 17: 2, 18: 2, 19: 2, 20: 2,
                   21: 3, 22: 3, 23: 4, 24: 5, 25: 5, 26: 6, 27: 6, 28: 6, 29: 6, 30: 6, 31: 6, 32: 6, 33: 6}
# A subset of Vistas v1.2's config.json labels: (readable, name, colour, 7-class train id)
VISTAS_LABELS = (
    ('Bird', 'animal--bird', (165, 42, 42), 255),
    ('Curb', 'construction--barrier--curb', (196, 196, 196), 1),
    ('Road', 'construction--flat--road', (128, 64, 128), 0),
    ('Sidewalk', 'construction--flat--sidewalk', (244, 35, 232), 0),
    ('Lane Marking - General', 'marking--general', (255, 255, 255), 0),
    ('Building', 'construction--structure--building', (70, 70, 70), 1),
    ('Person', 'human--person', (220, 20, 60), 5),
    ('Bicyclist', 'human--rider--bicyclist', (255, 0, 0), 5),
    ('Pole', 'object--support--pole', (153, 153, 153), 2),
    ('Traffic Sign (Front)', 'object--traffic-sign--front', (220, 220, 0), 2),
    ('Vegetation', 'nature--vegetation', (107, 142, 35), 3),
    ('Sky', 'nature--sky', (70, 130, 180), 4),
    ('Car', 'object--vehicle--car', (0, 0, 142), 6),
    ('Banner', 'object--banner', (255, 255, 128), 255),
    ('Ego Vehicle', 'void--ego-vehicle', (120, 10, 10), 255),
    ('Unlabeled', 'void--unlabeled', (0, 0, 0), 255),
)
FOLDER_MAPPING = {0: 'ignore', 7: 'road', 11: 'building', 24: 'person', 26: 'car'}
FOLDER_RAW_IDS = (0, 7, 11, 24, 26, 99)  # 99 is in no mapping


def expected_ids(mapping: dict[int, int], raw: np.ndarray) -> np.ndarray:
    """Apply an id mapping pixel by pixel (a plain dict lookup), 255 for ids it lacks."""
    out = np.full(raw.shape, 255, np.uint8)
    for raw_id in np.unique(raw):
        out[raw == raw_id] = mapping.get(int(raw_id), 255)
    return out


def _rng(name: str, seed: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def _ids(rng: np.random.Generator, size: tuple[int, int], ids: np.ndarray, dtype: type) -> np.ndarray:
    """Random ids drawn from `ids`, each of them present (the first pixels hold them all)."""
    out = rng.choice(ids, size).astype(dtype)
    out.flat[:len(ids)] = ids
    return out


def _imwrite(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), arr), path


def write_rgb(path: Path, rgb: np.ndarray) -> None:
    """Write an RGB array (OpenCV wants BGR)."""
    _imwrite(path, np.ascontiguousarray(rgb[..., ::-1]))


def write_palette_png(path: Path, ids: np.ndarray, palette: np.ndarray) -> None:
    """An 8-bit palette PNG (colour type 3), as Vistas ships its labels, encoded by hand."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))
    h, w = ids.shape
    rows = b''.join(b'\x00' + row.tobytes() for row in ids.astype(np.uint8))  # filter type 0 per row
    data = (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', w, h, 8, 3, 0, 0, 0))
            + chunk(b'PLTE', np.asarray(palette, np.uint8).tobytes()) + chunk(b'IDAT', zlib.compress(rows))
            + chunk(b'IEND', b''))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


# ---------------------------------------------------------------- SYNTHIA-RAND-CITYSCAPES

def synthia_content(name: str, size: tuple[int, int] = (24, 40), seed: int = 0) -> dict[str, np.ndarray]:
    """rgb, class ids (all of 0..22 plus 40, outside SYNTHIA), instance ids (non-zero, > 255 too), depth (cm)."""
    rng = _rng(name, seed)
    depth = rng.integers(0, 65536, size).astype(np.uint16)
    depth.flat[:2] = (0, 65535)
    return {'rgb': rng.integers(0, 256, (*size, 3)).astype(np.uint8),
            'class_ids': _ids(rng, size, np.array([*range(23), 40]), np.uint16),
            'instance_ids': rng.integers(1, 4000, size).astype(np.uint16), 'depth': depth}


def synthia_name(i: int) -> str:
    """SYNTHIA's file name for item i."""
    return f'{i:07d}.png'


def make_synthia(root: Path, n: int = 3, size: tuple[int, int] = (24, 40), layout: str = 'raw',
                 seed: int = 0) -> Path:
    """SYNTHIA-RAND-CITYSCAPES as published ('raw': GT/LABELS 16-bit 3-channel, class in R, instance in G;
    Depth/Depth 16-bit cm in 3 channels) or re-encoded ('parsed': parsed_LABELS 8-bit, Depth/ 16-bit)."""
    root = Path(root)
    for i in range(n):
        name = synthia_name(i)
        c = synthia_content(name, size, seed)
        write_rgb(root / 'RGB' / name, c['rgb'])
        if layout == 'raw':
            bgr = np.stack([np.zeros_like(c['class_ids']), c['instance_ids'], c['class_ids']], -1)
            _imwrite(root / 'GT' / 'LABELS' / name, bgr)
            _imwrite(root / 'Depth' / 'Depth' / name, np.stack([c['depth']] * 3, -1))
        elif layout == 'parsed':
            _imwrite(root / 'parsed_LABELS' / name, c['class_ids'].astype(np.uint8))
            _imwrite(root / 'Depth' / name, c['depth'])
        else:
            raise ValueError(layout)
    return root


# ---------------------------------------------------------------- Cityscapes

def cityscapes_content(stem: str, size: tuple[int, int] = (16, 32), seed: int = 0) -> dict[str, np.ndarray]:
    """rgb, labelIds (all of 0..33) and a 16-bit disparity with zeros (invalid)."""
    rng = _rng(stem, seed)
    disparity = rng.integers(1, 30000, size).astype(np.uint16)
    disparity[rng.random(size) < 0.3] = 0
    return {'rgb': rng.integers(0, 256, (*size, 3)).astype(np.uint8),
            'label_ids': _ids(rng, size, np.arange(34), np.uint8), 'disparity': disparity}


def make_cityscapes(root: Path, n_train: int = 3, n_val: int = 2, size: tuple[int, int] = (16, 32), seed: int = 0,
                    cities: tuple[str, ...] = ('aachen', 'bochum', 'bremen'), train_labels: bool = True,
                    disparity: bool = False) -> Path:
    """Cityscapes' leftImg8bit/, gtFine/ (labelIds only) and optionally disparity/, spread over a few cities."""
    root = Path(root)
    for split, n in (('train', n_train), ('val', n_val)):
        for j in range(n):
            city = cities[j % len(cities)]
            stem = f'{city}_{j:06d}_000019'
            c = cityscapes_content(stem, size, seed)
            write_rgb(root / 'leftImg8bit' / split / city / f'{stem}_leftImg8bit.png', c['rgb'])
            if split == 'val' or train_labels:
                _imwrite(root / 'gtFine' / split / city / f'{stem}_gtFine_labelIds.png', c['label_ids'])
            if disparity:
                _imwrite(root / 'disparity' / split / city / f'{stem}_disparity.png', c['disparity'])
    return root


# ---------------------------------------------------------------- Mapillary Vistas v1.2

def vistas_content(stem: str, size: tuple[int, int] = (18, 30), seed: int = 0) -> dict[str, np.ndarray]:
    """rgb and label ids (indices into VISTAS_LABELS, all present)."""
    rng = _rng(stem, seed)
    return {'rgb': rng.integers(0, 256, (*size, 3)).astype(np.uint8),
            'label_ids': _ids(rng, size, np.arange(len(VISTAS_LABELS)), np.uint8)}


def make_vistas(root: Path, n_train: int = 2, n_val: int = 2, size: tuple[int, int] = (18, 30), seed: int = 0,
                labels: str = 'palette') -> Path:
    """Vistas v1.2: config.json, {training,validation}/images/*.jpg and labels/*.png: 'palette' PNGs as published
    (the palette padded with black to 256 entries), plain 8-bit 'ids' or 'rgb' colours of config.json."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    config = [{'color': list(colour), 'instances': False, 'readable': readable, 'name': name, 'evaluate': True}
              for readable, name, colour, _ in VISTAS_LABELS]
    (root / 'config.json').write_text(json.dumps({'labels': config, 'version': '1.2'}, indent=1))
    colours = np.zeros((256, 3), np.uint8)
    colours[:len(VISTAS_LABELS)] = [colour for _, _, colour, _ in VISTAS_LABELS]
    for folder, n in (('training', n_train), ('validation', n_val)):
        for j in range(n):
            stem = f'{folder[0]}{j:03d}_vistas'
            c = vistas_content(stem, size, seed)
            write_rgb(root / folder / 'images' / f'{stem}.jpg', c['rgb'])
            label = root / folder / 'labels' / f'{stem}.png'
            if labels == 'palette':
                write_palette_png(label, c['label_ids'], colours)
            elif labels == 'ids':
                _imwrite(label, c['label_ids'])
            else:
                write_rgb(label, colours[c['label_ids']])
    return root


# ---------------------------------------------------------------- folder layout (users' own data)

def folder_content(key: str, size: tuple[int, int] = (20, 30), seed: int = 0,
                   raw_ids: tuple[int, ...] = FOLDER_RAW_IDS) -> dict[str, np.ndarray]:
    """rgb, raw label ids and sparse depth (uint16, about 60% zeros = no LiDAR return)."""
    rng = _rng(key, seed)
    depth = rng.integers(1, 60000, size).astype(np.uint16)
    depth[rng.random(size) < 0.6] = 0
    return {'rgb': rng.integers(0, 256, (*size, 3)).astype(np.uint8),
            'label_ids': _ids(rng, size, np.array(raw_ids), np.uint16), 'depth': depth}


def folder_key(split: str, rel: str) -> str:
    """The content key of the image at images/{split}/{rel} (rel without suffix)."""
    return f'{split}/{rel}'


def make_folder(root: Path, n_train: int = 3, n_val: int = 2, size: tuple[int, int] = (20, 30), seed: int = 0,
                id_mapping: dict[int, str | int] | None = None, classes: tuple[str, ...] | None = None,
                raw_ids: tuple[int, ...] = FOLDER_RAW_IDS, label_bits: int = 8, depth_format: str | None = 'png',
                unit: str = 'mm') -> Path:
    """The folder layout: dataset.yaml, images/{split}/seq_*/NNNNNN.png, labels/... (.png ids, 8 or 16 bits) and
    sparse depth/... ('png' 16-bit, 'npy' or 'tiff' float32; None: no depth) in `unit`."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    mapping = FOLDER_MAPPING if id_mapping is None else id_mapping
    lines = ['# a user dataset (e.g. CARLA with LiDAR depth)']
    if classes:
        lines.append(f'classes: [{", ".join(classes)}]')
    lines += ['id_mapping:', *(f'  {k}: {v}' for k, v in mapping.items())]
    if depth_format:
        lines.append(f'depth: {{unit: {unit}, inverse: false, scale: 1.0}}')
    (root / 'dataset.yaml').write_text('\n'.join(lines) + '\n')
    for split, n in (('train', n_train), ('val', n_val)):
        for j in range(n):
            rel = f'seq_{"ab"[j % 2]}/{j:06d}'
            c = folder_content(folder_key(split, rel), size, seed, raw_ids)
            write_rgb(root / 'images' / split / f'{rel}.png', c['rgb'])
            _imwrite(root / 'labels' / split / f'{rel}.png', c['label_ids'].astype(f'uint{label_bits}'))
            depth = root / 'depth' / split / rel
            if depth_format == 'png':
                _imwrite(depth.with_suffix('.png'), c['depth'])
            elif depth_format == 'npy':
                depth.parent.mkdir(parents=True, exist_ok=True)
                np.save(depth.with_suffix('.npy'), c['depth'].astype(np.float32))
            elif depth_format == 'tiff':
                _imwrite(depth.with_suffix('.tiff'), c['depth'].astype(np.float32))
    return root
