"""fastai types and blocks for depth, the paired source/target DataBlock, and the DataLoaders factory.

A training batch is `(x_src, x_trg, mask_src, depth_src)` (`n_inp=2`): a labelled source sample with its
inverse depth, paired with a target image drawn independently; shapes (B, 3, Hs, Ws), (B, 3, Ht, Wt),
(B, Hs, Ws) int64 and (B, 1, Hs, Ws) float (NaN = no depth), like the model's depth output. Validation batches
are `(x_trg, mask_trg)` with the masks kept at the label's full resolution, as the reference evaluates.
"""
from __future__ import annotations

import numbers
from collections.abc import Iterable
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch
from fastai.data.block import DataBlock, TransformBlock
from fastai.data.core import DataLoaders, TfmdDL
from fastai.data.transforms import IntToFloatTensor, Normalize
from fastai.torch_core import TensorImageBase, TensorMask
from fastai.vision.core import PILImage, PILMask, TensorImage, ToTensor, image2tensor
from fasttransform import ItemTransform, Transform
from PIL import Image

from .datasets import DatasetError, DomainDataset, Sample, _to_rgb, image_size, open_dataset, read_array
from .losses import IGNORE_INDEX
from .protocols import Protocol, get_protocol

__all__ = ['DataItem', 'PILDepth', 'TensorDepth', 'ReadImage', 'ReadMask', 'ReadDepth', 'SourceImageBlock',
           'TargetImageBlock', 'MaskBlockFor', 'DepthBlock', 'target_order', 'target_index',
           'PairedItem', 'TargetPairing', 'PairedDL', 'PairedAugment', 'ToBGR',
           'normalization', 'dada_datablock', 'target_datablock', 'dada_dataloaders', 'parse_size',
           'PAPER_SOURCE_SIZE', 'PAPER_TARGET_SIZE', 'depth_to_rgb', 'resize_with_pad', 'pad_to_aspect', 'fit_to_size',
           'padded_content_size', 'resize_depth', 'TensorClassMap', 'IMAGE_ITEMS', 'image_to_rgb', 'image_item_size',
           'image_item_problem', 'check_image_items', 'DADADataLoaders']

PAPER_SOURCE_SIZE = (760, 1280)  # (H, W) of SYNTHIA images in the paper's recipe
PAPER_TARGET_SIZE = (512, 1024)  # (H, W) of Cityscapes images in the paper's recipe


@dataclass(frozen=True)
class DataItem:
    """One sample of one dataset: the reader and the sample's files."""
    ds: DomainDataset
    sample: Sample

    def __repr__(self) -> str:
        return f'{self.ds.kind}:{self.sample.image.name}'


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


# ---------------------------------------------------------------------------------------------------------
# Depth type
# ---------------------------------------------------------------------------------------------------------
def depth_to_rgb(depth: np.ndarray | torch.Tensor, vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """Inverse depth (H, W) -> RGB uint8 with the 'magma' colour map: near (large inverse depth) is warm,
    far is dark; missing values black. Percentile scaling unless vmin/vmax are given."""
    from matplotlib import colormaps
    d = np.asarray(depth.detach().cpu() if isinstance(depth, torch.Tensor) else depth, np.float32).squeeze()
    valid = np.isfinite(d)
    if not valid.any():
        return np.zeros((*d.shape, 3), np.uint8)
    lo = np.percentile(d[valid], 2) if vmin is None else vmin
    hi = np.percentile(d[valid], 98) if vmax is None else vmax
    norm = np.clip((d - lo) / max(hi - lo, 1e-12), 0, 1)
    rgb = (colormaps['magma'](norm)[..., :3] * 255).astype(np.uint8)
    rgb[~valid] = 0
    return rgb


def _show_depth(depth, ctx=None, **kwargs):
    """Show an inverse-depth map in `depth_to_rgb`'s colours (only a `title` is passed on)."""
    from fastai.torch_core import show_image
    return show_image(depth_to_rgb(depth), ctx=ctx, **{k: v for k, v in kwargs.items() if k == 'title'})


class TensorDepth(TensorImageBase):
    """An inverse-depth map (B, 1, H, W) float; NaN where the depth is unknown."""

    def show(self, ctx=None, **kwargs):
        return _show_depth(self, ctx, **kwargs)


class PILDepth(PILMask):
    """An inverse-depth map as a 32-bit float PIL image (resized with nearest neighbour, like masks)."""
    _open_args, _show_args = {'mode': 'F'}, {}
    _tensor_cls = TensorDepth

    def show(self, ctx=None, **kwargs):
        return _show_depth(np.asarray(self), ctx, **kwargs)


class TensorClassMap(TensorMask):
    """A class map (H, W) of train ids (`TensorMask`) that `show` draws in the colours of its `protocol`
    (`Protocol.colorize`: ignored pixels black); `codes` are the class names."""

    def show(self, ctx=None, **kwargs):
        proto = getattr(self, 'protocol', None)
        if proto is None:
            return super().show(ctx=ctx, **kwargs)
        from fastai.torch_core import show_image
        rgb = proto.colorize(np.asarray(self.detach().cpu().as_subclass(torch.Tensor).numpy()))
        kw = {k: v for k, v in kwargs.items() if k in ('title', 'figsize', 'alpha')}
        return show_image(rgb, ctx=ctx, interpolation='nearest', **kw)


@ToTensor
def encodes(self, o: PILDepth):
    """PILDepth -> TensorDepth (1, H, W): the channel kept, so batches are (B, 1, H, W) like the model's depth."""
    return o._tensor_cls(image2tensor(o))


# ---------------------------------------------------------------------------------------------------------
# Readers as type transforms (the reference resizes at load: bicubic images, nearest labels and depth)
# ---------------------------------------------------------------------------------------------------------
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
    """An image item -> (H, W, 3) uint8 RGB, by the datasets' rule (`datasets._to_rgb`): 16-bit values scaled to
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
        return _to_rgb(read_array(item), Path(item))
    if isinstance(item, Image.Image):
        what, arr = f'PIL image of mode {item.mode} ({item.width}x{item.height})', _pil_array(item)
        if (problem := _array_problem(arr, what)) is not None:
            raise DatasetError(problem)
    else:
        what, arr = f'numpy array of shape {item.shape}', item
    arr = arr.astype(np.uint16 if arr.dtype.itemsize == 2 else np.uint8, copy=False)
    if arr.ndim == 3 and arr.shape[2] in (3, 4):  # RGB(A) -> the BGR(A) channel order `_to_rgb` takes from OpenCV
        arr = arr[..., [2, 1, 0, 3][:arr.shape[2]]]
    return _to_rgb(np.ascontiguousarray(arr), what)


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


class ReadImage:
    """An image item -> PILImage (RGB) brought to `size` (H, W) with bicubic interpolation (padded black where the
    images keep their aspect ratio). A `DataItem` is brought to size as its dataset says (`fit`); any other item
    that `image_to_rgb` reads (path, PIL image, numpy array) as `fit` says: 'stretch' or 'pad'."""

    def __init__(self, size: tuple[int, int] | None, fit: str = 'stretch'):
        self.size, self.fit = size, fit

    def __call__(self, item) -> PILImage:
        fit = item.ds.fit if isinstance(item, DataItem) else self.fit
        img = Image.fromarray(image_to_rgb(item))
        return PILImage(fit_to_size(img, self.size, Image.BICUBIC, (0, 0, 0), fit))


class ReadMask:
    """DataItem -> PILMask of train ids (255 ignored), resized with nearest neighbour (None keeps full size;
    a dataset that keeps the aspect ratio pads it, ignored, to the aspect ratio of `frame`, the images' size)."""

    def __init__(self, size: tuple[int, int] | None, frame: tuple[int, int] | None = None):
        self.size, self.frame = size, frame

    def __call__(self, item: DataItem) -> PILMask:
        img = Image.fromarray(item.ds.read_label(item.sample))
        return PILMask(fit_to_size(img, self.size, Image.NEAREST, IGNORE_INDEX, item.ds.fit, self.frame))


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


class ReadDepth:
    """DataItem -> PILDepth inverse depth resized with OpenCV's nearest neighbour (`resize_depth`, as the
    reference); all NaN where there is no depth."""

    def __init__(self, size: tuple[int, int] | None):
        self.size = size

    def __call__(self, item: DataItem) -> PILDepth:
        if item.ds.has_depth and item.sample.depth is not None:
            depth = item.ds.read_depth(item.sample).astype(np.float32)
        else:
            h, w = image_size(item.sample.image)
            depth = np.full((h, w), np.nan, np.float32)
        return PILDepth(Image.fromarray(resize_depth(depth, self.size, item.ds.fit), mode='F'))


def SourceImageBlock(size: tuple[int, int] | None) -> TransformBlock:
    """Source images read and resized to the source size."""
    return TransformBlock(type_tfms=ReadImage(size), batch_tfms=IntToFloatTensor)


def TargetImageBlock(size: tuple[int, int] | None, fit: str = 'stretch') -> TransformBlock:
    """Target images read and resized to the target size (read as the source's are); images that are not a
    dataset's items (test images) are brought to it as `fit` says."""
    return TransformBlock(type_tfms=ReadImage(size, fit), batch_tfms=IntToFloatTensor)


def MaskBlockFor(size: tuple[int, int] | None, codes: Sequence[str], frame: tuple[int, int] | None = None) -> TransformBlock:
    """Segmentation masks of train ids (None keeps the label's full resolution, for evaluation; `frame` is then
    the size of the images they go with)."""
    from fastai.vision.data import AddMaskCodes
    return TransformBlock(type_tfms=ReadMask(size, frame), item_tfms=AddMaskCodes(codes=list(codes)),
                          batch_tfms=IntToFloatTensor)


def DepthBlock(size: tuple[int, int] | None) -> TransformBlock:
    """Inverse-depth maps as `TensorDepth` (float, NaN = unknown), resized like masks."""
    return TransformBlock(type_tfms=ReadDepth(size))


# ---------------------------------------------------------------------------------------------------------
# Normalisation
# ---------------------------------------------------------------------------------------------------------
class ToBGR(Transform):
    """Swap RGB <-> BGR on image batches (the reference's networks take BGR)."""
    order = 90

    def encodes(self, x: TensorImage) -> TensorImage:
        return x.flip(1)

    def decodes(self, x: TensorImage) -> TensorImage:
        return x.flip(1)


def normalization(kind: str = 'imagenet', arch: str | None = None) -> list:
    """Batch transforms normalising images for a backbone's weights: 'reference' (BGR, 0..255 minus the
    reference mean, no std), 'timm' (the timm model's pretrained mean/std), 'imagenet' or 'none'."""
    from .model import REFERENCE_BGR_MEAN
    if kind == 'reference':
        return [ToBGR(), Normalize.from_stats([m / 255 for m in REFERENCE_BGR_MEAN], [1 / 255] * 3)]
    if kind == 'timm':
        import timm
        cfg = timm.get_pretrained_cfg(arch) if arch else None
        mean, std = (cfg.mean, cfg.std) if cfg is not None else ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
        return [Normalize.from_stats(list(mean), list(std))]
    if kind == 'imagenet':
        return [Normalize.from_stats([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])]
    if kind == 'none':
        return []
    raise ValueError(f"unknown normalisation {kind!r}; valid: reference, timm, imagenet, none")


# ---------------------------------------------------------------------------------------------------------
# Pairing source and target
# ---------------------------------------------------------------------------------------------------------
def _epoch_permutations(seed: int, epoch: int, stream: int, n: int, length: int) -> np.ndarray:
    """The first `length` values of seeded random permutations of range(`n`), one after the other: stream 0
    orders the sources of `epoch`, stream 1 draws their targets."""
    rng = np.random.default_rng([seed, epoch, stream])
    return np.concatenate([rng.permutation(n) for _ in range(max(-(-length // n), 1))])[:length]


def target_order(seed: int, epoch: int, n_targets: int, length: int) -> np.ndarray:
    """The target indices drawn for the first `length` positions of `epoch`: seeded random permutations of all
    `n_targets` targets, one after the other, independent of the source shuffle. A function of its arguments alone
    (a longer draw starts with the shorter one), so the pairing is the same across processes, workers and resumes,
    and a source repeated in a long epoch gets fresh targets."""
    return _epoch_permutations(seed, epoch, 1, n_targets, length)


def target_index(seed: int, epoch: int, pos: int, n_targets: int) -> int:
    """The index of the target paired with the sample at position `pos` of `epoch` (`target_order`'s `pos`-th)."""
    return int(target_order(seed, epoch, n_targets, pos + 1)[pos])


@dataclass(frozen=True)
class PairedItem:
    """A training item: a labelled source item and the target item paired with it."""
    source: DataItem
    target: DataItem

    def __repr__(self) -> str:
        return f'{self.source!r} + {self.target!r}'


@dataclass(frozen=True)
class TargetPairing:
    """The target items and the seed that pair them with source samples (`target_order`). As the training
    DataBlock's `get_items` it pairs a list of source items as epoch 0 does, position = index in the list
    (what `Datasets[i]` and `DataBlock.summary` show); `PairedDL` pairs each epoch's samples by their position."""
    targets: tuple[DataItem, ...]
    seed: int = 0

    def __post_init__(self):
        if not len(self.targets):
            raise ValueError('TargetPairing needs at least one target item')
        object.__setattr__(self, 'targets', tuple(self.targets))

    def order(self, epoch: int, length: int) -> np.ndarray:
        """The target indices of the first `length` positions of `epoch`."""
        return target_order(self.seed, epoch, len(self.targets), length)

    def __call__(self, sources: Sequence[DataItem]) -> list[PairedItem]:
        """`sources` paired with the targets of epoch 0, the i-th source with the i-th draw."""
        sources = list(sources)
        return [PairedItem(s, self.targets[t]) for s, t in zip(sources, self.order(0, len(sources)))]


_source_of, _target_of = attrgetter('source'), attrgetter('target')  # the training DataBlock's getters


class PairedDL(TfmdDL):
    """Training DataLoader of (source sample, target image) pairs. Shuffling and pairing are functions of
    (seed, epoch), so every process of a distributed run and a resumed run see the same order: the sample at
    position `pos` of the epoch gets the target `pairing.order(epoch, ...)[pos]`. `n` sets the number of samples
    per epoch (default: all sources once; a longer epoch goes through the sources again in a new order); `skip`
    drops the first `skip` batches of the epoch (resume inside an epoch) and `len` counts the batches left."""

    def __init__(self, dataset=None, pairing: TargetPairing | None = None, seed: int = 0, **kwargs):
        self.pairing, self.seed, self.epoch, self.skip = pairing, seed, 0, 0  # no pairing: the items' own targets
        super().__init__(dataset, **kwargs)

    def set_epoch(self, epoch: int) -> None:
        """Select the shuffle and target pairing of `epoch` (called by the learner before each epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return max(super().__len__() - self.skip, 0)

    def source_order(self) -> list[int]:
        """The source indices of the whole epoch (before `skip`), a function of (seed, epoch)."""
        n_items = len(self.dataset)
        if not self.shuffle:
            return [i % n_items for i in range(self.n)]
        return _epoch_permutations(self.seed, self.epoch, 0, n_items, self.n).tolist()

    def get_idxs(self) -> list[tuple[int, int, int]]:
        """(position in the epoch, source index, target index) of the samples left after `skip`, a function of
        (seed, epoch); the target index is -1 without a `pairing` (the item's own target is kept)."""
        order = self.source_order()
        targets = self.pairing.order(self.epoch, len(order)).tolist() if self.pairing is not None else [-1] * len(order)
        start = self.skip * (self.bs or 1)  # a resumed epoch skips the batches already trained on
        return [(pos, idx, trg) for pos, (idx, trg) in enumerate(zip(order, targets))][start:]

    def create_item(self, s):
        """The item of `s`: (position, source index, target index) from `get_idxs` (a list after fastai's
        DistributedDL broadcasts it), a bare source index, or None (fastai's set-up pass); the last two keep the
        item's own (epoch 0) target."""
        if isinstance(s, (tuple, list)):
            _, idx, trg = (int(v) for v in s)
        else:
            idx, trg = (0 if s is None else int(s)), -1
        if trg < 0:
            return self.dataset[idx]
        pair = PairedItem(self.dataset.items[idx].source, self.pairing.targets[trg])
        return tuple(tl.tfms(pair) for tl in self.dataset.tls)

    def new(self, dataset=None, cls=None, **kwargs):
        res = super().new(dataset, cls, **{'pairing': self.pairing, 'seed': self.seed, **kwargs})
        res.epoch = self.epoch
        return res

    def show_batch(self, b=None, max_n: int = 4, ctxs=None, show: bool = True, **kwargs):
        """Source image, source mask, source depth and target image, one row per pair."""
        from fastai.vision.data import get_grid
        b = self.one_batch() if b is None else b
        x_src, x_trg, mask, depth = self.decode(b)
        n = min(max_n, len(x_src))
        axs = get_grid(4 * n, nrows=n, ncols=4, figsize=kwargs.pop('figsize', (16, 3 * n)),
                       title='source image / source mask / source depth / target image')
        proto = getattr(self, 'protocol', None)
        for i in range(n):
            x_src[i].show(ctx=axs[4 * i])
            if proto is not None:
                axs[4 * i + 1].imshow(proto.colorize(mask[i].cpu().numpy()))
            else:
                mask[i].show(ctx=axs[4 * i + 1])
            depth[i].show(ctx=axs[4 * i + 2])
            x_trg[i].show(ctx=axs[4 * i + 3])
            for a in axs[4 * i:4 * i + 4]:
                a.axis('off')
        return axs


# ---------------------------------------------------------------------------------------------------------
# Optional augmentation
# ---------------------------------------------------------------------------------------------------------
class PairedAugment(ItemTransform):
    """Random horizontal flip and random scaled crop (fastai's `FlipItem` and `RandomResizedCrop`) of a training
    item `(source image, target image, mask, depth)`: one draw applied to the source image, its mask and its
    depth together, another, independent draw for the target image (a crop computed on one domain's image is
    meaningless for the other, whose size differs). Each crop keeps at least `min_scale` of the image's area
    with the aspect ratio of the output and is resized to the domain's size (bicubic for images, nearest for
    masks and depth); a size of None keeps the image's size and only flips. `dada_datablock` then reads the
    files at full resolution and lets this transform do the single resize. Training only (`split_idx=0`)."""
    split_idx, order = 0, 1  # after AddMaskCodes, before ToTensor (5)

    def __init__(self, source_size: tuple[int, int] | None = PAPER_SOURCE_SIZE,
                 target_size: tuple[int, int] | None = PAPER_TARGET_SIZE, min_scale: float = 0.5, p_flip: float = 0.5):
        super().__init__()
        self.source_size, self.target_size = parse_size(source_size), parse_size(target_size)
        self.min_scale, self.p_flip = min_scale, p_flip
        self.source_tfms, self.target_tfms = self._tfms(self.source_size), self._tfms(self.target_size)

    def _tfms(self, size: tuple[int, int] | None) -> list:
        from fastai.vision.augment import FlipItem, RandomResizedCrop
        tfms = [FlipItem(self.p_flip)]
        if size is not None:
            tfms.append(RandomResizedCrop(size, min_scale=self.min_scale, ratio=(size[1] / size[0],) * 2,
                                          resamples=(Image.BICUBIC, Image.NEAREST)))
        return tfms

    @staticmethod
    def _apply(tfms: list, items: tuple) -> tuple:
        for t in tfms:  # a RandTransform draws once per call, then maps over the tuple
            items = t(items, split_idx=0)
        return tuple(items)

    def encodes(self, b):
        x_src, x_trg, mask, depth = b
        x_src, mask, depth = self._apply(self.source_tfms, (x_src, mask, depth))
        (x_trg,) = self._apply(self.target_tfms, (x_trg,))
        return (x_src, x_trg, mask, depth)


# ---------------------------------------------------------------------------------------------------------
# DataBlocks and DataLoaders
# ---------------------------------------------------------------------------------------------------------
def dada_datablock(targets: Sequence[DataItem], codes: Sequence[str], source_size=PAPER_SOURCE_SIZE,
                   target_size=PAPER_TARGET_SIZE, norm: Sequence = (), item_tfms=None, seed: int = 0) -> DataBlock:
    """The training DataBlock: its source is a list of source `DataItem`s, which `get_items` (a `TargetPairing` of
    `targets`) turns into `PairedItem`s; blocks (source image, target image, mask, depth). Files are resized at load
    (bicubic images, nearest masks and depth), except where a `PairedAugment` among `item_tfms` crops and resizes
    them."""
    source_size, target_size = parse_size(source_size), parse_size(target_size)
    item_tfms = [] if item_tfms is None else list(item_tfms) if isinstance(item_tfms, (list, tuple)) else [item_tfms]
    aug = [t for t in item_tfms if isinstance(t, PairedAugment)]
    load_src = None if any(t.source_size is not None for t in aug) else source_size
    load_trg = None if any(t.target_size is not None for t in aug) else target_size
    pairing = TargetPairing(tuple(targets), seed)
    block = DataBlock(blocks=(SourceImageBlock(load_src), TargetImageBlock(load_trg),
                              MaskBlockFor(load_src, codes), DepthBlock(load_src)),
                      get_items=pairing, getters=[_source_of, _target_of, _source_of, _source_of], n_inp=2,
                      splitter=_all_train, item_tfms=item_tfms, batch_tfms=list(norm), dl_type=PairedDL)
    block.dls_kwargs = {**block.dls_kwargs, 'pairing': pairing, 'seed': seed}  # `block.dataloaders` pairs as training
    return block


def target_datablock(codes: Sequence[str], target_size=PAPER_TARGET_SIZE, norm: Sequence = (),
                     depth: bool = False, fit: str = 'stretch') -> DataBlock:
    """The evaluation DataBlock: target image resized to `target_size`, mask at its full resolution, and with
    `depth` the target's inverse depth (or disparity) at its full resolution, for the depth metrics. `fit` is how
    test images (`DADADataLoaders.test_dl`) reach `target_size`: the target dataset's."""
    blocks = (TargetImageBlock(target_size, fit), MaskBlockFor(None, codes, target_size)) + ((DepthBlock(None),) if depth else ())
    return DataBlock(blocks=blocks, n_inp=1, splitter=_all_train, batch_tfms=list(norm))


def _all_train(items: Sequence) -> tuple[list[int], list[int]]:
    """Splitter that keeps every item in one split (source and target sets come split on disk)."""
    return list(range(len(items))), []


def _items(ds: DomainDataset, split: str) -> list[DataItem]:
    return [DataItem(ds, s) for s in ds.samples(split)]


def dada_dataloaders(source: str | DomainDataset, target: str | DomainDataset, n_classes: int = 16,
                     source_size=PAPER_SOURCE_SIZE, target_size=PAPER_TARGET_SIZE, bs: int = 1,
                     val_bs: int = 1, norm: str | Sequence = 'imagenet', arch: str | None = None,
                     augment: bool = False, num_workers: int = 0, seed: int = 0, epoch_len: int | None = None,
                     device=None, val_max: int | None = None, pin_memory: bool | None = None) -> DataLoaders:
    """DataLoaders for DADA: `train` pairs labelled source samples with target images, `valid` holds the
    labelled target validation set. `source`/`target` are 'KIND:DIR' specs or opened datasets. `device` None
    is fastai's default device (the GPU when there is one): batches, and the batch transforms, go there."""
    proto = get_protocol(n_classes)
    src = source if isinstance(source, DomainDataset) else open_dataset(source, n_classes=n_classes)
    trg = target if isinstance(target, DomainDataset) else open_dataset(target, n_classes=n_classes)
    source_size, target_size = parse_size(source_size), parse_size(target_size)
    norm_tfms = normalization(norm, arch) if isinstance(norm, str) else list(norm)
    src_items, trg_items, val_items = _items(src, 'train'), _items(trg, 'train'), _items(trg, 'val')
    if val_max is not None:
        val_items = val_items[:val_max]
    aug = _augmentations(source_size, target_size) if augment else None
    block = dada_datablock(trg_items, proto.classes, source_size, target_size, norm_tfms, aug, seed)
    dsets = block.datasets(src_items, verbose=False)
    from fastai.torch_core import default_device
    device = default_device() if device is None else torch.device(device)
    pin = device.type == 'cuda' if pin_memory is None else pin_memory
    common = dict(num_workers=num_workers, pin_memory=pin, device=device)
    train = PairedDL(dsets.train, pairing=block.dls_kwargs['pairing'], seed=seed, bs=bs, shuffle=True, drop_last=True,
                     n=epoch_len * bs if epoch_len else None, after_item=block.item_tfms,
                     after_batch=block.batch_tfms, **common)
    train.protocol = proto
    vblock = target_datablock(proto.classes, target_size, norm_tfms, depth=bool(getattr(trg, 'has_depth', False)),
                              fit=getattr(trg, 'fit', 'stretch'))
    vdsets = vblock.datasets(val_items, verbose=False)
    valid = TfmdDL(vdsets.train, bs=val_bs, shuffle=False, after_item=vblock.item_tfms,
                   after_batch=vblock.batch_tfms, **common)
    dls = DADADataLoaders(train, valid, device=device)
    dls.protocol, dls.source_ds, dls.target_ds, dls.norm = proto, src, trg, norm
    dls.source_size, dls.target_size = source_size, target_size
    return dls


class DADADataLoaders(DataLoaders):
    """The `DataLoaders` of DADA: `train` pairs source samples with target images, `valid` is the labelled target
    validation set; `test_dl` reads new images as the target's. `dada_dataloaders` sets what describes the data
    (`dada_learner` copies it into the learner's `meta`)."""
    protocol: Protocol | None = None  # the class set
    source_ds: DomainDataset | None = None  # the source dataset's reader
    target_ds: DomainDataset | None = None  # the target dataset's reader (its `fit`: how images reach the size)
    norm: str | Sequence = ()  # the normalisation asked for: a `normalization` kind or batch transforms
    source_size: tuple[int, int] | None = None  # (H, W) of the source images
    target_size: tuple[int, int] | None = None  # (H, W) of the target images

    def test_dl(self, test_items, rm_type_tfms=None, with_labels: bool = False, **kwargs) -> TfmdDL:
        """fastai's `test_dl`: a DataLoader of `test_items` read, brought to the target size (stretched, or padded
        where the target dataset keeps the aspect ratio) and normalised as the validation images, in batches of
        the validation batch size. Items: paths (str or Path), PIL images, numpy arrays (H, W[, 3 or 4]) of uint8 or
        uint16, or datasets' `DataItem`s (`with_labels=True` then gives their masks too); converted by
        `image_to_rgb`'s rule (16 bits scaled to 8, gray repeated, alpha dropped). An empty list or an item of
        another kind raises `DatasetError`."""
        items = check_image_items(test_items)
        return super().test_dl(items, rm_type_tfms=0 if rm_type_tfms is None else rm_type_tfms,
                               with_labels=with_labels, **kwargs)


def _augmentations(source_size: tuple[int, int] | None, target_size: tuple[int, int] | None = None) -> list:
    """Optional augmentation through fastai's transforms (off in the paper's recipe): flip, scale, crop,
    consistent over the source image, mask and depth and independent for the target image."""
    return [PairedAugment(source_size, target_size)]
