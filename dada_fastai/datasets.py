"""Readers (and writers) for the on-disk layouts of SYNTHIA, Cityscapes, Mapillary Vistas and a generic folder.

Readers take datasets exactly as their publishers ship them and return full-resolution numpy arrays: images
(H, W, 3) uint8 RGB, labels (H, W) uint8 train ids with 255 = ignore, depth (H, W) float32 inverse-depth targets
with NaN where depth is missing. Every file is decoded with OpenCV (IMREAD_UNCHANGED), which keeps 16 bits per
channel; Pillow-based readers silently turn SYNTHIA's 16-bit 3-channel labels into 8 bits. Palette PNG labels
(Vistas) are the exception: their palette indices are read as stored, with Pillow.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import yaml

from .errors import DatasetError
from .image_files import (REPAIR, first_channel, image_size, read_array, read_ids, to_rgb, write_cityscapes_sample,
                          write_png, write_synthia_sample)
from .protocols import ClassProtocol, get_protocol, lookup_table

__all__ = ['DatasetError', 'KINDS', 'SPLITS', 'Sample', 'DomainDataset', 'SynthiaDataset', 'CityscapesDataset',
           'VistasDataset', 'FolderDataset', 'parse_spec', 'open_dataset', 'read_array', 'read_ids',
           'image_size', 'inverse_depth_cm', 'write_png', 'write_synthia_sample', 'write_cityscapes_sample', 'DataItem']

KINDS = ('synthia', 'cityscapes', 'vistas', 'folder')
SPLITS = ('train', 'val')
IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff')
DEPTH_SUFFIXES = ('.png', '.npy', '.tiff', '.tif')


@dataclass(frozen=True)
class Sample:
    """The files of one item: an image and, when the split has them, its label and depth."""
    image: Path
    label: Path | None = None
    depth: Path | None = None


def inverse_depth_cm(depth_cm: np.ndarray) -> np.ndarray:
    """SYNTHIA's inverse-depth target from depth in centimetres: 65536 / (d + 1), float32."""
    return np.float32(65536) / (np.asarray(depth_cm, np.float32) + np.float32(1))


# ---------------------------------------------------------------- datasets

class DomainDataset:
    """Base reader: lists a split's samples and decodes images, labels and depth at full resolution.
    `lut` maps raw label ids to train ids (uint8, 65536 entries); the layout is checked when opening."""
    kind: ClassVar[str] = ''
    layout: ClassVar[str] = ''  # the expected layout, quoted in error messages
    has_depth: bool = False
    fit: str = 'stretch'  # how images reach a domain's size: 'stretch' (resize) or 'pad' (keep the aspect ratio)
    lut: np.ndarray
    defined_ids: Sequence[int] = ()  # the raw label ids the format defines (void and unused classes included)

    def __init__(self, root: str | Path, protocol: ClassProtocol):
        self.root, self.protocol = Path(root).expanduser(), protocol
        if not self.root.is_dir():
            raise DatasetError(f'{self.kind} root not found: {self.root}; {self.layout}')
        self._open()

    def __repr__(self) -> str:
        return f'{type(self).__name__}({str(self.root)!r}, classes={self.protocol.name})'

    def _open(self) -> None:
        """Check the layout, read the dataset's metadata and set `lut` (and `has_depth`)."""
        raise NotImplementedError

    def _split_dir(self, split: str) -> Path:
        """The folder that holds a split's images."""
        raise NotImplementedError

    def _list(self, split: str, problems: list[str] | None = None) -> list[Sample]:
        """The split's samples (its image folder exists), each file checked for existence."""
        raise NotImplementedError

    def _check_split(self, split: str) -> None:
        if split not in SPLITS:
            raise DatasetError(f"unknown split {split!r} for {self.root}; valid: 'train', 'val'")

    def has_split(self, split: str) -> bool:
        """Whether the split's image folder exists."""
        self._check_split(split)
        return self._split_dir(split).is_dir()

    def samples(self, split: str, problems: list[str] | None = None) -> list[Sample]:
        """The sorted samples of 'train' or 'val'; raises DatasetError when the split is missing or empty, or at the
        first image without its label or depth file; given a `problems` list, such images are left out and their
        one-line messages added to it instead (the data report lists them all)."""
        self._check_split(split)
        folder = self._split_dir(split)
        if not folder.is_dir():
            raise DatasetError(f'{self.kind} {split} split not found: missing {folder}; {self.layout}')
        items = self._list(split, problems)
        if not items and not problems:
            raise DatasetError(f'{self.kind} {split} split is empty: no images in {folder}; {self.layout}')
        return items

    @staticmethod
    def _problem(problems: list[str] | None, error: DatasetError) -> None:
        """Raise `error`, or, given a `problems` list, add its message there (the caller leaves the sample out)."""
        if problems is None:
            raise error
        problems.append(str(error))

    def _missing(self, image: Path, what: str, path: Path) -> DatasetError:
        if path.is_dir() or path.is_symlink():
            kind = 'a folder' if path.is_dir() else 'a broken link or a link loop'
            return DatasetError(f'image {image} has no readable {what}: {path} is {kind}; restore the file')
        return DatasetError(f'image {image} has no {what}: missing {path}; restore it or remove the image')

    def _check_size(self, s: Sample, path: Path, arr: np.ndarray) -> None:
        """Raise unless `arr` (read from `path`) has the size of the sample's image."""
        size = image_size(s.image)
        if arr.shape[:2] != size:
            raise DatasetError(f'size mismatch: {path} is {arr.shape[1]}x{arr.shape[0]} but image {s.image} is '
                               f'{size[1]}x{size[0]} (WxH); the two files must belong together')

    def read_image(self, s: Sample) -> np.ndarray:
        """The image as (H, W, 3) uint8 RGB."""
        return to_rgb(read_array(s.image), s.image)

    def _read_raw_ids(self, path: Path) -> np.ndarray:
        """Decode a label file into raw ids."""
        return read_ids(path)

    def read_raw_label(self, s: Sample) -> np.ndarray:
        """The label's raw dataset ids as (H, W) integers."""
        if s.label is None:
            raise DatasetError(f'image {s.image} has no label; a labelled split is needed here ({self.layout})')
        ids = self._read_raw_ids(s.label)
        self._check_size(s, s.label, ids)
        return ids

    def read_label(self, s: Sample) -> np.ndarray:
        """The label as (H, W) uint8 train ids; 255 = ignore, including ids outside the protocol's mapping."""
        return self.lut[self.read_raw_label(s)]

    def _read_raw_depth(self, path: Path) -> np.ndarray:
        """Decode a depth file as stored, (H, W)."""
        return first_channel(read_array(path))

    def _inverse_depth(self, raw: np.ndarray, path: Path) -> np.ndarray:
        """The stored depth values -> float32 inverse-depth target, NaN where missing."""
        raise NotImplementedError

    def read_depth(self, s: Sample) -> np.ndarray:
        """The (H, W) float32 inverse-depth target; NaN where depth is missing."""
        if s.depth is None:
            raise DatasetError(f'image {s.image} has no depth file in this {self.kind} dataset; {self.layout}')
        raw = self._read_raw_depth(s.depth)
        self._check_size(s, s.depth, raw)
        return self._inverse_depth(raw, s.depth)


class SynthiaDataset(DomainDataset):
    """SYNTHIA-RAND-CITYSCAPES, raw (GT/LABELS 16-bit with the class in R, Depth/Depth) or re-encoded
    (parsed_LABELS 8-bit, Depth/). Everything is 'train'; the depth target is 65536 / (d_cm + 1) (d = 0 kept)."""
    kind = 'synthia'
    layout = ('expected RGB/, GT/LABELS/ and Depth/Depth/ (SYNTHIA-RAND-CITYSCAPES, the split with depth) '
              'or RGB/, parsed_LABELS/ and Depth/')
    has_depth = True

    def _open(self) -> None:
        r = self.root
        if (r / 'GT' / 'LABELS').is_dir() and (r / 'Depth' / 'Depth').is_dir():
            self.encoding, self.label_dir, self.depth_dir = 'raw', r / 'GT' / 'LABELS', r / 'Depth' / 'Depth'
        elif (r / 'parsed_LABELS').is_dir() and (r / 'Depth').is_dir():
            self.encoding, self.label_dir, self.depth_dir = 'parsed', r / 'parsed_LABELS', r / 'Depth'
        elif (r / 'GT').is_dir() and not (r / 'Depth').is_dir():
            raise DatasetError(f'{r} has RGB/ and GT/ but no Depth/: this SYNTHIA split (e.g. SYNTHIA_RAND_CVPR16) '
                               f'has no depth; DADA needs SYNTHIA-RAND-CITYSCAPES, the split with Depth/Depth/')
        else:
            raise DatasetError(f'not a SYNTHIA-RAND-CITYSCAPES folder: {r}; {self.layout}')
        if not (r / 'RGB').is_dir():
            raise DatasetError(f'SYNTHIA images not found: missing {r / "RGB"}; {self.layout}')
        self.lut = lookup_table(self.protocol.synthia)
        self.defined_ids = range(23)  # SYNTHIA-RAND-CITYSCAPES: 0 void ... 22 lanemarking

    def _split_dir(self, split: str) -> Path:
        return self.root / 'RGB'

    def has_split(self, split: str) -> bool:
        """Only 'train': SYNTHIA has no labelled validation split."""
        return super().has_split(split) and split == 'train'

    def samples(self, split: str, problems: list[str] | None = None) -> list[Sample]:
        """All of SYNTHIA as 'train'; 'val' raises DatasetError (there is no labelled validation split)."""
        self._check_split(split)
        if split == 'val':
            raise DatasetError(f'SYNTHIA has no labelled validation split ({self.root}): use it as the source '
                               f'(train) and evaluate on the target\'s val split')
        return super().samples(split, problems)

    def _list(self, split: str, problems: list[str] | None = None) -> list[Sample]:
        items = []
        for image in sorted((self.root / 'RGB').glob('*.png')):
            label, depth = self.label_dir / image.name, self.depth_dir / image.name
            if not label.is_file():
                self._problem(problems, self._missing(image, 'label', label))
            elif not depth.is_file():
                self._problem(problems, self._missing(image, 'depth', depth))
            else:
                items.append(Sample(image, label, depth))
        return items

    def _read_raw_ids(self, path: Path) -> np.ndarray:
        if self.encoding == 'parsed':
            return read_ids(path)
        arr = read_array(path)
        if arr.dtype != np.uint16 or arr.ndim != 3:
            raise DatasetError(f'SYNTHIA label {path} is {arr.dtype} with shape {arr.shape}; expected the published '
                               f'16-bit 3-channel PNG (a tool that drops to 8 bits loses the class ids); {REPAIR}')
        return arr[..., 2]  # the class id is in R, OpenCV's last channel; G holds the instance id

    def _read_raw_depth(self, path: Path) -> np.ndarray:
        arr = first_channel(read_array(path))
        if arr.dtype != np.uint16:
            raise DatasetError(f'SYNTHIA depth {path} is {arr.dtype}; expected a 16-bit PNG in centimetres; {REPAIR}')
        return arr

    def _inverse_depth(self, raw: np.ndarray, path: Path) -> np.ndarray:
        return inverse_depth_cm(raw)


class CityscapesDataset(DomainDataset):
    """Cityscapes: train used unlabelled (labels when present), val labelled. Depth only when disparity/ exists:
    disparity (p - 1) / 256 (p = 0 -> NaN) is itself the inverse-depth target, up to SYNTHIA's scale."""
    kind = 'cityscapes'
    layout = ('expected leftImg8bit/{train,val}/<city>/*_leftImg8bit.png and '
              'gtFine/{train,val}/<city>/*_gtFine_labelIds.png (optional disparity/{train,val}/<city>/*_disparity.png)')

    def _open(self) -> None:
        if not (self.root / 'leftImg8bit').is_dir():
            raise DatasetError(f'Cityscapes images not found: missing {self.root / "leftImg8bit"}; {self.layout}')
        self.has_depth = (self.root / 'disparity').is_dir()
        self.lut = lookup_table(self.protocol.cityscapes)
        self.defined_ids = range(34)  # labelIds 0 (unlabeled) ... 33 (bicycle)

    def _split_dir(self, split: str) -> Path:
        return self.root / 'leftImg8bit' / split

    def _list(self, split: str, problems: list[str] | None = None) -> list[Sample]:
        items, disparity = [], self.root / 'disparity' / split
        with_depth = disparity.is_dir()
        for image in sorted(self._split_dir(split).glob('*/*_leftImg8bit.png')):
            stem, city = image.name[:-len('_leftImg8bit.png')], image.parent.name
            label = self.root / 'gtFine' / split / city / f'{stem}_gtFine_labelIds.png'
            if not label.is_file():
                if split == 'val':
                    self._problem(problems, self._missing(image, 'label', label))
                    continue
                label = None  # train is used unlabelled
            depth = disparity / city / f'{stem}_disparity.png' if with_depth else None
            if depth is not None and not depth.is_file():
                self._problem(problems, self._missing(image, 'disparity', depth))
                continue
            items.append(Sample(image, label, depth))
        return items

    def _inverse_depth(self, raw: np.ndarray, path: Path) -> np.ndarray:
        disp = (raw.astype(np.float32) - 1) / 256
        return np.where(raw > 0, disp, np.float32(np.nan)).astype(np.float32)


class VistasDataset(DomainDataset):
    """Mapillary Vistas v1.2 (7-class protocol only): labels index config.json's `labels`, mapped by readable name;
    'train' -> training/, 'val' -> validation/; palette PNG labels are read by palette index. Images come in many
    sizes and aspect ratios: as in the reference they keep their aspect ratio and are padded (`fit='pad'`)."""
    kind = 'vistas'
    fit = 'pad'
    layout = 'expected config.json, {training,validation}/images/*.jpg and {training,validation}/labels/*.png'
    _FOLDERS = {'train': 'training', 'val': 'validation'}

    def __init__(self, root: str | Path, protocol: ClassProtocol):
        if not protocol.vistas:
            raise DatasetError(f'Mapillary Vistas ({root}) is supported with the 7-class protocol only: '
                               f'use --classes 7')
        super().__init__(root, protocol)

    def _open(self) -> None:
        path = self.root / 'config.json'
        if not path.is_file():
            raise DatasetError(f'Mapillary Vistas config not found: missing {path}; {self.layout}')
        try:
            labels = json.loads(path.read_text())['labels']
            names = [str(entry['readable']).lower() for entry in labels]
            self.colours = np.array([entry.get('color', (0, 0, 0)) for entry in labels], np.uint8).reshape(-1, 3)
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
            raise DatasetError(f'cannot parse {path} ({type(e).__name__}: {e}); expected Vistas v1.2\'s config.json '
                               f'with a "labels" list of entries with "readable" names') from None
        vistas = self.protocol.vistas
        self.lut = lookup_table({i: vistas[name] for i, name in enumerate(names) if name in vistas})
        self.defined_ids = range(len(names))

    def _split_dir(self, split: str) -> Path:
        return self.root / self._FOLDERS[split] / 'images'

    def _list(self, split: str, problems: list[str] | None = None) -> list[Sample]:
        items, labels = [], self.root / self._FOLDERS[split] / 'labels'
        for image in sorted(p for p in self._split_dir(split).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            label = labels / f'{image.stem}.png'
            if not label.is_file():
                if split == 'val':
                    self._problem(problems, self._missing(image, 'label', label))
                    continue
                label = None  # train is used unlabelled
            items.append(Sample(image, label))
        return items

    def _read_raw_ids(self, path: Path) -> np.ndarray:
        return read_ids(path, self.colours)


class FolderDataset(DomainDataset):
    """Users' own data (CARLA, GTA, LiDAR...): dataset.yaml or dataset.json, images/{split}/..., labels/{split}/...
    and depth/{split}/... matched by relative path stem. Labels map through `id_mapping` (raw id -> class name or
    train id; null or 'ignore' -> 255). Depth `{unit: m|cm|mm|synthia, inverse, scale}`: values * scale, in cm,
    give 65536 / (d_cm + 1) as SYNTHIA; 0, negative or NaN = missing (except unit 'synthia', where 0 is a depth, as in
    SYNTHIA); `inverse: true` uses values * scale as the target. `fit: pad` keeps the images' aspect ratio
    (resize to fit, pad the rest, as for Vistas) instead of stretching them to the domain's size."""
    kind = 'folder'
    layout = ('expected dataset.yaml (or dataset.json), images/{train,val}/..., labels/{train,val}/... '
              '(same relative paths, .png) and optional depth/{train,val}/... (.png, .npy or .tiff)')
    _KEYS = ('name', 'classes', 'id_mapping', 'depth', 'fit')
    _DEPTH_KEYS = ('unit', 'inverse', 'scale')
    _UNITS_CM = {'m': 100.0, 'cm': 1.0, 'mm': 0.1, 'synthia': 1.0}

    def _load_config(self) -> tuple[Path, dict[str, Any]]:
        """The parsed dataset.yaml / dataset.json."""
        for name in ('dataset.yaml', 'dataset.yml', 'dataset.json'):
            if (path := self.root / name).is_file():
                break
        else:
            raise DatasetError(f'folder dataset config not found: no dataset.yaml in {self.root}; {self.layout}')
        try:
            text = path.read_text()
            config = json.loads(text) if path.suffix == '.json' else yaml.safe_load(text)
        except yaml.MarkedYAMLError as e:
            where = f' at line {e.problem_mark.line + 1}' if e.problem_mark else ''
            raise DatasetError(f'cannot parse {path}: {e.problem}{where}; fix the YAML syntax') from None
        except (ValueError, yaml.YAMLError, UnicodeDecodeError) as e:
            raise DatasetError(f'cannot parse {path}: {e}; fix the syntax') from None
        if not isinstance(config, dict):
            raise DatasetError(f'{path} must hold a mapping with keys {", ".join(self._KEYS)}')
        if unknown := set(config) - set(self._KEYS):
            raise DatasetError(f'{path}: unknown keys {sorted(map(str, unknown))}; valid: {", ".join(self._KEYS)}')
        return path, config

    def _train_id(self, value: Any, path: Path) -> int:
        """An id_mapping value (class name, train id, null or 'ignore') -> train id."""
        names = self.protocol.classes
        if value is None or (isinstance(value, str) and value.lower() == 'ignore'):
            return 255
        if isinstance(value, str) and value.lower() in names:
            return names.index(value.lower())
        if isinstance(value, int) and not isinstance(value, bool) and (0 <= value < len(names) or value == 255):
            return value
        raise DatasetError(f'{path}: id_mapping target {value!r} is not a class of the {self.protocol.name}-class '
                           f'protocol; valid: {", ".join(names)}, a train id, or ignore')

    def _open(self) -> None:
        path, config = self._load_config()
        if not (self.root / 'images').is_dir():
            raise DatasetError(f'folder dataset images not found: missing {self.root / "images"}; {self.layout}')
        names = self.protocol.classes
        classes = config.get('classes') or []
        if not isinstance(classes, list) or any(str(c).lower() not in names for c in classes):
            raise DatasetError(f'{path}: classes must list names of the {self.protocol.name}-class protocol '
                               f'({", ".join(names)}); got {classes!r}')
        mapping = config.get('id_mapping') or {}
        if not mapping and (self.root / 'labels').is_dir():
            raise DatasetError(f'{path}: labels/ exists but id_mapping is missing; add id_mapping: {{raw_id: class}}')
        if not isinstance(mapping, dict):
            raise DatasetError(f'{path}: id_mapping must be a mapping raw_id: class name')
        self.lut = lookup_table({self._raw_id(k, path): self._train_id(v, path) for k, v in mapping.items()})
        self.defined_ids = sorted({self._raw_id(k, path) for k in mapping})  # ignored ones named there too
        self._depth_config(path, config.get('depth') or {})
        self.fit = config.get('fit', 'stretch')
        if self.fit not in ('stretch', 'pad'):
            raise DatasetError(f'{path}: fit must be stretch or pad, not {self.fit!r}')

    @staticmethod
    def _raw_id(raw: Any, path: Path) -> int:
        """An id_mapping key -> raw label id in 0..65535 (JSON keys are strings)."""
        try:
            raw_id = int(raw)
        except (TypeError, ValueError):
            raw_id = -1
        if not 0 <= raw_id < 65536:
            raise DatasetError(f'{path}: id_mapping key {raw!r} is not a label id in 0..65535')
        return raw_id

    def _depth_config(self, path: Path, depth: Any) -> None:
        """Validate and store the `depth` section (unit, inverse, scale) and whether depth/ exists."""
        self.has_depth = (self.root / 'depth').is_dir()
        if not isinstance(depth, dict) or not set(depth) <= set(self._DEPTH_KEYS):
            raise DatasetError(f'{path}: depth must be a mapping with keys {", ".join(self._DEPTH_KEYS)}, '
                               f'not {depth!r}')
        self.depth_inverse = depth.get('inverse', False)
        self.depth_unit = depth.get('unit')
        self.depth_scale = depth.get('scale', 1.0)
        if not isinstance(self.depth_inverse, bool):
            raise DatasetError(f'{path}: depth.inverse must be true or false, not {self.depth_inverse!r}')
        scale = self.depth_scale
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or scale <= 0:
            raise DatasetError(f'{path}: depth.scale must be a positive number, not {self.depth_scale!r}')
        if self.depth_unit is None and self.has_depth and not self.depth_inverse:
            raise DatasetError(f'{path}: depth/ exists but depth.unit is not set; add depth: {{unit: m}} '
                               f'(one of {", ".join(self._UNITS_CM)})')
        if self.depth_unit is not None and self.depth_unit not in self._UNITS_CM:
            raise DatasetError(f'{path}: unknown depth unit {self.depth_unit!r}; valid: {", ".join(self._UNITS_CM)}')

    def _split_dir(self, split: str) -> Path:
        return self.root / 'images' / split

    def _list(self, split: str, problems: list[str] | None = None) -> list[Sample]:
        images = self._split_dir(split)
        labels, depths = self.root / 'labels' / split, self.root / 'depth' / split
        files = sorted((p for p in images.rglob('*') if p.suffix.lower() in IMAGE_SUFFIXES),
                       key=lambda p: p.relative_to(images).as_posix())
        items = []
        for image in files:
            rel = image.relative_to(images)
            if image.is_dir():  # never left out without a word
                self._problem(problems, DatasetError(f'{image} is a folder where an image file should be; rename or '
                                                     f'remove it'))
                continue
            label = labels / rel.with_suffix('.png') if labels.is_dir() else None
            if label is not None and not label.is_file():
                self._problem(problems, self._missing(image, 'label', label))
                continue
            depth = None
            if depths.is_dir():
                found = [p for s in DEPTH_SUFFIXES if (p := depths / rel.with_suffix(s)).is_file()]
                if not found:
                    there = [p for s in DEPTH_SUFFIXES if (p := depths / rel.with_suffix(s)).is_symlink() or p.exists()]
                    where = (there or [depths / rel.with_suffix('.png')])[0]
                    self._problem(problems, self._missing(image, 'depth', where))
                    continue
                depth = found[0]
            items.append(Sample(image, label, depth))
        return items

    def _read_raw_depth(self, path: Path) -> np.ndarray:
        if path.suffix.lower() != '.npy':
            return first_channel(read_array(path))
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:  # EOFError: an empty file
            raise DatasetError(f'cannot read {path} ({e}); {REPAIR}') from None
        if arr.ndim not in (2, 3) or not np.issubdtype(arr.dtype, np.number):
            raise DatasetError(f'depth {path} has shape {arr.shape} and type {arr.dtype}; expected (H, W) numbers')
        return first_channel(arr)

    def _inverse_depth(self, raw: np.ndarray, path: Path) -> np.ndarray:
        values = raw.astype(np.float32) * np.float32(self.depth_scale)
        missing = ~np.isfinite(values)
        if self.depth_unit != 'synthia':
            missing |= values <= 0  # sparse depth (LiDAR): 0 = no return
        if not self.depth_inverse:
            values = inverse_depth_cm(values * np.float32(self._UNITS_CM[self.depth_unit]))
        return np.where(missing, np.float32(np.nan), values).astype(np.float32)


_DATASETS: dict[str, type[DomainDataset]] = {'synthia': SynthiaDataset, 'cityscapes': CityscapesDataset,
                                              'vistas': VistasDataset, 'folder': FolderDataset}


def _check_kind(kind: str, where: str) -> str:
    """A valid dataset kind, lowercased."""
    if kind.lower() not in KINDS:
        raise DatasetError(f'unknown dataset kind {kind!r} in {where}; valid kinds: {", ".join(KINDS)} '
                           f'(write KIND:DIR, e.g. synthia:/data/SYNTHIA)')
    return kind.lower()


def parse_spec(spec: str) -> tuple[str, Path]:
    """'KIND:DIR' -> (kind, Path(DIR)); raises DatasetError listing the valid kinds."""
    kind, sep, folder = str(spec).partition(':')
    if not sep or not folder:
        raise DatasetError(f'bad dataset spec {spec!r}: expected KIND:DIR with KIND one of {", ".join(KINDS)}')
    return _check_kind(kind, repr(spec)), Path(folder).expanduser()


def open_dataset(spec_or_kind: str, root: str | Path | None = None, n_classes: int | str = 16) -> DomainDataset:
    """Open 'KIND:DIR' (or a kind and a root) with the 16- or 7-class protocol, checking the layout now."""
    if root is None:
        kind, root = parse_spec(spec_or_kind)
    else:
        kind = _check_kind(spec_or_kind, str(root))
    return _DATASETS[kind](root, get_protocol(n_classes))


@dataclass(frozen=True)
class DataItem:
    """One sample of one dataset: the reader and the sample's files."""
    ds: DomainDataset
    sample: Sample

    def __repr__(self) -> str:
        return f'{self.ds.kind}:{self.sample.image.name}'
