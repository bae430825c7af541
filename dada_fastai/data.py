"""fastai types and blocks for depth, the paired source/target DataBlock, and the DataLoaders factory.

A training batch is `(x_src, x_trg, mask_src, depth_src)` (`n_inp=2`): a labelled source sample with its
inverse depth, paired with a target image drawn independently; shapes (B, 3, Hs, Ws), (B, 3, Ht, Wt),
(B, Hs, Ws) int64 and (B, 1, Hs, Ws) float (NaN = no depth), like the model's depth output. Validation batches
are `(x_trg, mask_trg)` with the masks kept at the label's full resolution, as the reference evaluates.
"""
from __future__ import annotations

from dataclasses import dataclass
from operator import attrgetter
from typing import Sequence

import numpy as np
import torch
from fastai.data.block import DataBlock, TransformBlock
from fastai.data.core import DataLoaders, TfmdDL
from fastai.data.transforms import IntToFloatTensor, Normalize
from fastai.torch_core import TensorImageBase, TensorMask
from fastai.vision.core import PILImage, PILMask, TensorImage, ToTensor, image2tensor
from fasttransform import ItemTransform, Transform
from PIL import Image

from .datasets import DataItem, DomainDataset, open_dataset
from .image_files import image_size
from .plots import depth_to_rgb
from .preprocess import (IMAGE_ITEMS, check_image_items, fit_to_size, image_item_problem, image_item_size,  # noqa: F401
                         image_to_rgb, pad_to_aspect, padded_content_size, parse_size, resize_depth, resize_with_pad)
from .losses import IGNORE_INDEX
from .protocols import ClassProtocol, get_protocol

__all__ = ['DataItem', 'PILDepth', 'TensorDepth', 'ReadImage', 'ReadMask', 'ReadDepth', 'SourceImageBlock',
           'TargetImageBlock', 'MaskBlockFor', 'InverseDepthBlock', 'DepthBlock', 'target_order', 'target_index',
           'PairedItem', 'TargetPairing', 'PairedDL', 'PairedAugment', 'ToBGR',
           'normalization', 'dada_datablock', 'target_datablock', 'target_dataloader', 'dada_dataloaders', 'parse_size',
           'PAPER_SOURCE_SIZE', 'PAPER_TARGET_SIZE', 'depth_to_rgb', 'resize_with_pad', 'pad_to_aspect', 'fit_to_size',
           'padded_content_size', 'resize_depth', 'TensorClassMap', 'IMAGE_ITEMS', 'image_to_rgb', 'image_item_size',
           'image_item_problem', 'check_image_items', 'DADADataLoaders']

PAPER_SOURCE_SIZE = (760, 1280)  # (H, W) of SYNTHIA images in the paper's recipe
PAPER_TARGET_SIZE = (512, 1024)  # (H, W) of Cityscapes images in the paper's recipe


# ---------------------------------------------------------------------------------------------------------
# Depth type
# ---------------------------------------------------------------------------------------------------------
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
    (`ClassProtocol.colorize`: ignored pixels black); `codes` are the class names."""

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


def InverseDepthBlock(size: tuple[int, int] | None) -> TransformBlock:
    """Inverse-depth maps as `TensorDepth` (float, NaN = unknown), resized like masks."""
    return TransformBlock(type_tfms=ReadDepth(size))


DepthBlock = InverseDepthBlock  # its former name (`model.DepthBlock` is the network's depth block)


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
                              MaskBlockFor(load_src, codes), InverseDepthBlock(load_src)),
                      get_items=pairing, getters=[_source_of, _target_of, _source_of, _source_of], n_inp=2,
                      splitter=_all_train, item_tfms=item_tfms, batch_tfms=list(norm), dl_type=PairedDL)
    block.dls_kwargs = {**block.dls_kwargs, 'pairing': pairing, 'seed': seed}  # `block.dataloaders` pairs as training
    return block


def target_datablock(codes: Sequence[str], target_size=PAPER_TARGET_SIZE, norm: Sequence = (),
                     depth: bool = False, fit: str = 'stretch') -> DataBlock:
    """The evaluation DataBlock: target image resized to `target_size`, mask at its full resolution, and with
    `depth` the target's inverse depth (or disparity) at its full resolution, for the depth metrics. `fit` is how
    test images (`DADADataLoaders.test_dl`) reach `target_size`: the target dataset's."""
    blocks = (TargetImageBlock(target_size, fit), MaskBlockFor(None, codes, target_size)) + ((InverseDepthBlock(None),) if depth else ())
    return DataBlock(blocks=blocks, n_inp=1, splitter=_all_train, batch_tfms=list(norm))


def target_dataloader(ds: DomainDataset, items: Sequence[DataItem], protocol: ClassProtocol, target_size, norm: Sequence = (),
                      bs: int = 1, **kwargs) -> TfmdDL:
    """The labelled target DataLoader that validation and evaluation read (`target_datablock`): `items` of the target
    dataset `ds` (its 'val' split for validation) brought to `target_size` as `ds` says (stretched or padded), labels
    at full resolution, and the target's depth where it ships depth for images that are not padded. `kwargs` go to
    the DataLoader (`device`, `num_workers`, `pin_memory`)."""
    fit = getattr(ds, 'fit', 'stretch')
    block = target_datablock(protocol.classes, parse_size(target_size), list(norm),
                             depth=bool(getattr(ds, 'has_depth', False)) and fit != 'pad', fit=fit)
    dsets = block.datasets(list(items), verbose=False)
    return TfmdDL(dsets.train, bs=bs, shuffle=False, after_item=block.item_tfms, after_batch=block.batch_tfms,
                  **kwargs)


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
    valid = target_dataloader(trg, val_items, proto, target_size, norm_tfms, bs=val_bs, **common)
    dls = DADADataLoaders(train, valid, device=device)
    dls.protocol, dls.source_ds, dls.target_ds, dls.norm = proto, src, trg, norm
    dls.source_size, dls.target_size = source_size, target_size
    return dls


class DADADataLoaders(DataLoaders):
    """The `DataLoaders` of DADA: `train` pairs source samples with target images, `valid` is the labelled target
    validation set; `test_dl` reads new images as the target's. `dada_dataloaders` sets what describes the data
    (`dada_learner` copies it into the learner's `meta`)."""
    protocol: ClassProtocol | None = None  # the class set
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
