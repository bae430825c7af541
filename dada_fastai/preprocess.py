"""Bringing images to the model's input: sizes (`parse_size`), the two ways a file reaches a domain's size
(stretched, or kept in aspect and padded as the reference does for Mapillary Vistas), depth maps resized with
OpenCV's nearest rule as the reference resizes them, and the image items that inference takes (paths, PIL images,
numpy arrays) read to RGB by the datasets' rule. Shared by training, evaluation and prediction."""
from __future__ import annotations

import numbers
from collections.abc import Iterable
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
from PIL import Image

from .datasets import DataItem
from .errors import DatasetError
from .image_files import image_size, read_array, to_rgb

__all__ = ['parse_size', 'padded_content_size', 'resize_with_pad', 'pad_to_aspect', 'fit_to_size', 'resize_depth',
           'IMAGE_ITEMS', 'image_item_problem', 'image_to_rgb', 'image_item_size', 'check_image_items']


def parse_size(size: str | int | Sequence[int] | None) -> tuple[int, int] | None:
    """'HxW' (or 'H,W'), an int or a digit string (square), or (H, W) -> (H, W); None stays None.
    Raises ValueError naming the bad value otherwise."""
    if size is None:
        return None
    bad = f'bad size {size!r}: expected HxW (for example 760x1280), an int or (H, W)'
    if isinstance(size, bool):
        raise ValueError(bad)
    if isinstance(size, numbers.Integral):
        hw = (int(size), int(size))
    elif isinstance(size, str):
        parts = size.strip().lower().replace(',', 'x').split('x')
        if len(parts) == 1:
            parts = parts * 2
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise ValueError(bad)
        hw = (int(parts[0]), int(parts[1]))
    elif isinstance(size, Sequence) or hasattr(size, '__len__'):
        if len(size) != 2 or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in size):
            raise ValueError(bad)
        hw = (int(size[0]), int(size[1]))
    else:
        raise ValueError(bad)
    if hw[0] <= 0 or hw[1] <= 0:
        raise ValueError(f'bad size {size!r}: height and width must be positive')
    return hw


def padded_content_size(image_hw: tuple[int, int], size: tuple[int, int]) -> tuple[int, int]:
    """(h, w) that an image of `image_hw` takes inside `size` (H, W) under `resize_with_pad`."""
    (ih, iw), (h, w) = image_hw, size
    return (int(ih * (w / iw)), w) if iw / ih > w / h else (h, int(iw * (h / ih)))


def resize_with_pad(img: Image.Image, size: tuple[int, int], resample: int, fill) -> Image.Image:
    """The reference's Mapillary Vistas resize: scale keeping the aspect ratio until the image fits (H, W) (sizes
    truncated as the reference does), put it at the top left and fill the rest with `fill`."""
    nh, nw = padded_content_size((img.size[1], img.size[0]), size)
    out = Image.new(img.mode, (size[1], size[0]), fill)
    out.paste(img.resize((nw, nh), resample), (0, 0))
    return out


def pad_to_aspect(img: Image.Image, aspect: float, fill) -> Image.Image:
    """Pad at the right or the bottom to the aspect ratio `aspect` (width / height), as the reference pads
    full-resolution Vistas labels for evaluation, so they line up with `resize_with_pad`'s images."""
    w, h = float(img.size[0]), float(img.size[1])
    if aspect > w / h:
        w = aspect * h
    elif aspect < w / h:
        h = w / aspect
    else:
        return img
    out = Image.new(img.mode, (int(w), int(h)), fill)
    out.paste(img, (0, 0))
    return out


def fit_to_size(img: Image.Image, size: tuple[int, int] | None, resample: int, fill, fit: str = 'stretch',
                frame: tuple[int, int] | None = None) -> Image.Image:
    """Bring a file's image, mask or depth to a domain's size (H, W): `fit='stretch'` resizes to it (SYNTHIA,
    Cityscapes, folders); `fit='pad'` keeps the aspect ratio and pads (Vistas, `resize_with_pad`). With no
    `size` (evaluation labels at full resolution) 'pad' pads to the aspect ratio of `frame`, the size the
    image was brought to."""
    if fit == 'pad':
        if size is not None:
            return img if img.size == (size[1], size[0]) else resize_with_pad(img, size, resample, fill)
        return pad_to_aspect(img, frame[1] / frame[0], fill) if frame is not None else img
    if size is None or img.size == (size[1], size[0]):
        return img
    return img.resize((size[1], size[0]), resample)


IMAGE_ITEMS = ('a path (str or Path), a PIL image, or a numpy array (H, W) gray, (H, W, 3) RGB or (H, W, 4) RGBA '
               'of uint8 or uint16')


def image_item_problem(item) -> str | None:
    """What makes `item` unusable as an image (one line: what, where, what to do), None when it looks usable;
    checked without decoding (a file that cannot be decoded is reported when it is read)."""
    if isinstance(item, DataItem) or isinstance(item, Image.Image):
        return None
    if isinstance(item, (str, Path)):
        p = Path(item)
        if p.is_dir():
            return f"{p} is a folder, not an image; pass its image files (for example fastai's get_image_files)"
        return None if p.is_file() else f'image file not found: {p}; check the path'
    if isinstance(item, np.ndarray):
        return _array_problem(item, f'numpy array of shape {item.shape} and type {item.dtype}')
    return f'a {type(item).__name__} cannot be read as an image; pass {IMAGE_ITEMS}'


def _array_problem(arr: np.ndarray, what: str) -> str | None:
    if not (arr.dtype.kind == 'u' and arr.dtype.itemsize in (1, 2)):
        return (f'{what}: pixels must be uint8 or uint16; convert it first '
                '(for example (x * 255).round().astype(np.uint8) for floats in [0, 1])')
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (1, 3, 4))) or 0 in arr.shape[:2]:
        return f'{what}: expected (H, W) gray, (H, W, 3) RGB or (H, W, 4) RGBA (channels last); reshape it'
    return None


def _pil_array(img: Image.Image) -> np.ndarray:
    """A PIL image as an array for `image_to_rgb`: gray ('L'), RGB, RGBA and 16-bit gray ('I;16*') as stored,
    32-bit integer gray ('I') as 16 bits when its values fit, other modes converted to RGB by Pillow."""
    if img.mode.startswith('I;16'):
        return np.asarray(img).astype(np.uint16)  # native byte order
    if img.mode == 'I':
        arr = np.asarray(img)
        return arr.astype(np.uint16) if arr.size and arr.min() >= 0 and arr.max() <= 65535 else arr
    if img.mode == 'F':
        return np.asarray(img)  # refused: float pixels
    return np.asarray(img if img.mode in ('L', 'RGB', 'RGBA') else img.convert('RGB'))


def image_to_rgb(item) -> np.ndarray:
    """An image item -> (H, W, 3) uint8 RGB, by the datasets' rule (`image_files.to_rgb`): 16-bit values scaled to
    8 bits (// 257), gray repeated in the three channels, the alpha channel of RGBA dropped (not blended over a
    background). Items: a dataset's `DataItem`; a path (str or Path; decoded with OpenCV, bit depth kept); a PIL
    image (modes other than L, RGB, RGBA and 16-bit gray converted to RGB by Pillow first); a numpy array
    (H, W), (H, W, 1), (H, W, 3) RGB or (H, W, 4) RGBA of uint8 or uint16. Anything else, or a file that cannot
    be read, raises `DatasetError` in one line."""
    if isinstance(item, DataItem):
        return item.ds.read_image(item.sample)
    problem = image_item_problem(item)
    if problem is not None:
        raise DatasetError(problem)
    if isinstance(item, (str, Path)):
        return to_rgb(read_array(item), Path(item))
    if isinstance(item, Image.Image):
        what, arr = f'PIL image of mode {item.mode} ({item.width}x{item.height})', _pil_array(item)
        if (problem := _array_problem(arr, what)) is not None:
            raise DatasetError(problem)
    else:
        what, arr = f'numpy array of shape {item.shape}', item
    arr = arr.astype(np.uint16 if arr.dtype.itemsize == 2 else np.uint8, copy=False)
    if arr.ndim == 3 and arr.shape[2] in (3, 4):  # RGB(A) -> the BGR(A) channel order `_to_rgb` takes from OpenCV
        arr = arr[..., [2, 1, 0, 3][:arr.shape[2]]]
    return to_rgb(np.ascontiguousarray(arr), what)


def image_item_size(item) -> tuple[int, int]:
    """(H, W) of an image item as `image_to_rgb` reads it (from the header for PNG and JPEG files)."""
    if isinstance(item, DataItem):
        return tuple(image_size(item.sample.image))
    if isinstance(item, Image.Image):
        return item.height, item.width
    if isinstance(item, np.ndarray):
        return tuple(item.shape[:2])
    if (problem := image_item_problem(item)) is not None:
        raise DatasetError(problem)
    return tuple(image_size(item))


def check_image_items(items) -> list:
    """The items of a test set as a list (one item alone becomes a list of one), each checked with
    `image_item_problem`; an empty list or a bad item raises `DatasetError` naming the item's position."""
    single = (str, Path, DataItem, Image.Image)
    if isinstance(items, single) or (isinstance(items, np.ndarray) and items.ndim <= 3) or not isinstance(items, Iterable):
        items = [items]
    items = list(items)
    if not items:
        raise DatasetError(f'no images to predict on: the list of test items is empty; pass {IMAGE_ITEMS}')
    for i, item in enumerate(items):
        if (problem := image_item_problem(item)) is not None:
            raise DatasetError(f'test item {i}: {problem}')
    return items


def resize_depth(depth: np.ndarray, size: tuple[int, int] | None, fit: str = 'stretch') -> np.ndarray:
    """An (H, W) float32 depth map brought to `size` (H, W) with OpenCV's nearest neighbour (`INTER_NEAREST`), as
    the reference resizes SYNTHIA's depth (Pillow's nearest rule takes other source pixels: from 320 to 128
    columns, Pillow takes 1, 3, 6, 8..., OpenCV 0, 2, 5, 7...); `fit='pad'` keeps the aspect ratio and pads with
    NaN (no depth) at the right or bottom, as `resize_with_pad`."""
    if size is None or depth.shape == tuple(size):
        return depth
    h, w = padded_content_size(depth.shape, size) if fit == 'pad' else size
    resized = cv2.resize(depth, (w, h), interpolation=cv2.INTER_NEAREST)
    if (h, w) == tuple(size):
        return resized
    out = np.full(size, np.nan, np.float32)
    out[:h, :w] = resized
    return out
