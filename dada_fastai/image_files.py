"""The image files of the datasets: decoding that keeps 16 bits (OpenCV; Pillow-based readers silently turn SYNTHIA's
16-bit 3-channel labels into 8 bits), sizes read from the headers, checks for truncated files, palette labels read as
stored; and writing PNGs and samples in the published layouts (the toy pair, tests, benchmarks)."""
from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np

from .errors import DatasetError
from .storage import atomic_write_bytes

__all__ = ['REPAIR', 'read_array', 'image_size', 'to_rgb', 'read_ids', 'first_channel', 'write_png',
           'write_synthia_sample', 'write_cityscapes_sample']

_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # start-of-frame markers (they hold the size)
REPAIR = 're-download or re-extract the file'  # what to do about a damaged file


def _check_png(path: Path) -> None:
    """Raise when `path` is not a PNG or does not end with the IEND chunk (a truncated file)."""
    with open(path, 'rb') as f:
        if f.read(8) != _PNG_SIGNATURE:
            raise DatasetError(f'not a PNG file: {path} (wrong signature); {REPAIR}')
        f.seek(max(path.stat().st_size - 12, 0))
        if f.read(12)[4:8] != b'IEND':  # the last chunk: length 0, 'IEND', CRC
            raise DatasetError(f'truncated PNG: {path} (no IEND chunk at its end); {REPAIR}')


def _check_jpeg(path: Path) -> None:
    """Raise when `path` does not end with a JPEG's end-of-image marker (a truncated file: OpenCV would decode it
    without a word, the missing part grey)."""
    with open(path, 'rb') as f:
        if f.read(2) != b'\xff\xd8':  # not a JPEG at all: the decoder says so
            return
        f.seek(max(path.stat().st_size - 1024, 0))
        if b'\xff\xd9' not in f.read():
            raise DatasetError(f'truncated JPEG: {path} (no end-of-image marker at its end); {REPAIR}')


def read_array(path: str | Path) -> np.ndarray:
    """Decode an image file with OpenCV as stored (IMREAD_UNCHANGED: bit depth kept, channels in BGR order)."""
    path = Path(path)
    if path.is_dir():
        raise DatasetError(f'{path} is a folder where an image file should be; {REPAIR}')
    if not path.is_file():
        what = 'a broken link or a link loop' if path.is_symlink() else 'missing file'
        raise DatasetError(f'{what}: {path}; check the dataset root, or {REPAIR}')
    if path.suffix.lower() == '.png':
        _check_png(path)
    elif path.suffix.lower() in ('.jpg', '.jpeg'):
        _check_jpeg(path)
    arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise DatasetError(f'cannot decode {path} (unreadable, truncated or not an image); {REPAIR}')
    return arr


def _png_chunks(path: Path) -> dict[bytes, bytes]:
    """The PNG chunks before the image data (IHDR, PLTE, ...), read from the file header only."""
    chunks = {}
    with open(path, 'rb') as f:
        if f.read(8) != _PNG_SIGNATURE:
            return chunks
        while len(head := f.read(8)) == 8:
            length, kind = struct.unpack('>I4s', head)
            if kind in (b'IDAT', b'IEND'):
                break
            chunks[kind] = f.read(length)
            f.seek(4, 1)  # CRC
    return chunks


def _jpeg_size(path: Path) -> tuple[int, int] | None:
    """(H, W) from a JPEG's start-of-frame segment, None when the header cannot be walked."""
    with open(path, 'rb') as f:
        if f.read(2) != b'\xff\xd8':
            return None
        while len(head := f.read(4)) == 4 and head[0] == 0xFF:
            if head[1] in _JPEG_SOF:
                frame = f.read(5)
                return struct.unpack('>HH', frame[1:5]) if len(frame) == 5 else None
            if (length := int.from_bytes(head[2:4], 'big')) < 2:
                return None
            f.seek(length - 2, 1)
    return None


def image_size(path: str | Path) -> tuple[int, int]:
    """(H, W) of an image, from its header for PNG and JPEG (no decoding), else by decoding it."""
    path = Path(path)
    if path.is_file():
        ihdr = _png_chunks(path).get(b'IHDR')
        if ihdr is not None and len(ihdr) >= 8:
            width, height = struct.unpack('>II', ihdr[:8])
            return height, width
        if (size := _jpeg_size(path)) is not None:
            return size
    return read_array(path).shape[:2]


def to_rgb(arr: np.ndarray, path: Path) -> np.ndarray:
    """OpenCV's gray, BGR or BGRA array (8 or 16 bits) -> (H, W, 3) uint8 RGB."""
    if arr.dtype == np.uint16:
        arr = (arr // 257).astype(np.uint8)
    if arr.dtype != np.uint8:
        raise DatasetError(f'image {path} has pixel type {arr.dtype}; expected 8- or 16-bit integers')
    if arr.ndim == 2:
        return cv2.cvtColor(arr, cv2.COLOR_GRAY2RGB)
    codes = {1: cv2.COLOR_GRAY2RGB, 3: cv2.COLOR_BGR2RGB, 4: cv2.COLOR_BGRA2RGB}
    if arr.shape[2] not in codes:
        raise DatasetError(f'image {path} has {arr.shape[2]} channels; expected 1, 3 or 4')
    return cv2.cvtColor(arr, codes[arr.shape[2]])


def _palette_indices(bgr: np.ndarray, palette: np.ndarray, path: Path) -> np.ndarray:
    """Colours of an RGB label (OpenCV's BGR) -> palette rows; a colour that the palette repeats gives its lowest row."""
    keys = palette[:, 0].astype(np.int32) << 16 | palette[:, 1].astype(np.int32) << 8 | palette[:, 2]
    colours, first = np.unique(keys, return_index=True)
    table = np.zeros(1 << 24, np.uint8)  # 24-bit colour -> index, faster than a search
    table[colours] = first
    pix = bgr[..., 2].astype(np.int32) << 16 | bgr[..., 1].astype(np.int32) << 8 | bgr[..., 0]
    ids = table[pix]
    if (keys[ids] != pix).any():
        raise DatasetError(f'label {path} has colours outside its palette; expected single-channel ids')
    return ids


def _palette_png_indices(path: Path) -> np.ndarray:
    """The pixels of a palette PNG as they are stored: palette indices (H, W) uint8, never turned into colours."""
    from PIL import Image
    _check_png(path)
    try:
        with Image.open(path) as img:
            if img.mode != 'P':
                raise DatasetError(f'label {path} is a palette PNG that decodes as {img.mode}; {REPAIR}')
            return np.array(img)
    except OSError as e:
        raise DatasetError(f'cannot decode {path} ({e}); {REPAIR}') from None


def read_ids(path: str | Path, palette: np.ndarray | None = None) -> np.ndarray:
    """A label file's raw ids as (H, W): single-channel 8/16-bit PNGs as stored, palette PNGs as their palette
    indices (read directly: a palette may repeat a colour), RGB labels through `palette` ((N, 3) RGB, id = row)
    when given."""
    path = Path(path)
    ihdr = _png_chunks(path).get(b'IHDR') if path.is_file() else None
    if ihdr is not None and len(ihdr) >= 10 and ihdr[9] == 3:  # PNG colour type 3: palette indices
        return _palette_png_indices(path)
    arr = read_array(path)
    if arr.ndim == 2:
        return arr
    if palette is None or arr.dtype != np.uint8:
        raise DatasetError(f'label {path} has {arr.shape[2]} channels; expected single-channel ids or a palette PNG')
    return _palette_indices(arr[..., :3], np.asarray(palette, np.uint8), path)


def first_channel(arr: np.ndarray) -> np.ndarray:
    """A depth map stored with its value repeated in each channel -> (H, W)."""
    return arr[..., 0] if arr.ndim == 3 else arr


def write_png(path: str | Path, array: np.ndarray) -> Path:
    """Write an RGB (H,W,3) or single-channel (H,W) uint8/uint16 array as PNG (parents created), atomically: a full
    disk raises `DiskFullError` and leaves no partial file."""
    path = Path(path)
    arr = np.ascontiguousarray(array[..., ::-1] if array.ndim == 3 else array)  # OpenCV encodes BGR
    ok, data = cv2.imencode('.png', arr)
    if not ok:
        raise ValueError(f'cannot encode an array of shape {array.shape} and type {array.dtype} as PNG ({path})')
    return atomic_write_bytes(path, data.tobytes())


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
                            label_ids: np.ndarray | None = None, disparity: np.ndarray | None = None) -> None:
    """Write one Cityscapes sample: leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png and, when given,
    gtFine/{split}/{city}/{stem}_gtFine_labelIds.png (8-bit labelIds) and disparity/{split}/{city}/
    {stem}_disparity.png (16-bit, the stored p = 256 d + 1, 0 = invalid)."""
    root = Path(root)
    write_png(root / 'leftImg8bit' / split / city / f'{stem}_leftImg8bit.png', rgb)
    if label_ids is not None:
        write_png(root / 'gtFine' / split / city / f'{stem}_gtFine_labelIds.png', np.asarray(label_ids, np.uint8))
    if disparity is not None:
        write_png(root / 'disparity' / split / city / f'{stem}_disparity.png', np.asarray(disparity, np.uint16))
