"""Readers (and writers) for the on-disk layouts of SYNTHIA, Cityscapes, Mapillary Vistas and a generic folder."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

__all__ = ['write_png', 'write_synthia_sample', 'write_cityscapes_sample']


def write_png(path: str | Path, array: np.ndarray) -> Path:
    """Write an RGB (H,W,3) or single-channel (H,W) uint8/uint16 array as PNG (parents created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.ascontiguousarray(array[..., ::-1] if array.ndim == 3 else array)  # OpenCV writes BGR
    if not cv2.imwrite(str(path), arr):
        raise OSError(f'could not write {path}')
    return path


def write_synthia_sample(root: str | Path, name: str, rgb: np.ndarray, class_ids: np.ndarray,
                         depth_cm: np.ndarray, instance_ids: np.ndarray | None = None,
                         layout: str = 'raw') -> None:
    """Write one SYNTHIA-RAND-CITYSCAPES sample as published (`layout='raw'`: GT/LABELS 16-bit with the class
    in the first channel, Depth/Depth 16-bit centimetres in 3 channels) or in the reference's re-encoded
    layout (`'parsed'`: 8-bit parsed_LABELS/ and Depth/)."""
    root = Path(root)
    write_png(root / 'RGB' / name, rgb)
    depth = np.asarray(depth_cm, np.uint16)
    if layout == 'raw':
        inst = np.zeros_like(class_ids) if instance_ids is None else instance_ids
        label = np.stack([class_ids, inst, np.zeros_like(class_ids)], -1).astype(np.uint16)
        write_png(root / 'GT' / 'LABELS' / name, label)
        write_png(root / 'Depth' / 'Depth' / name, np.stack([depth] * 3, -1))
    elif layout == 'parsed':
        write_png(root / 'parsed_LABELS' / name, np.asarray(class_ids, np.uint8))
        write_png(root / 'Depth' / name, depth)
    else:
        raise ValueError(f"unknown SYNTHIA layout {layout!r}; valid: 'raw', 'parsed'")


def write_cityscapes_sample(root: str | Path, split: str, city: str, stem: str, rgb: np.ndarray,
                            label_ids: np.ndarray | None = None) -> None:
    """Write one Cityscapes sample: leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png and, when given,
    gtFine/{split}/{city}/{stem}_gtFine_labelIds.png (8-bit labelIds)."""
    root = Path(root)
    write_png(root / 'leftImg8bit' / split / city / f'{stem}_leftImg8bit.png', rgb)
    if label_ids is not None:
        write_png(root / 'gtFine' / split / city / f'{stem}_gtFine_labelIds.png', np.asarray(label_ids, np.uint8))
