"""Class protocols (16 and 7 classes): names, palettes and id mappings, as data."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

__all__ = ['ClassProtocol', 'Protocol', 'PROTOCOLS', 'get_protocol', 'lookup_table', 'CITYSCAPES_CATEGORY']


@dataclass(frozen=True)
class ClassProtocol:
    """A class set: names, colours, the mIoU* subset and how each dataset's ids map to train ids."""
    name: str
    classes: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    synthia: Mapping[int, int]  # SYNTHIA class id -> train id
    cityscapes: Mapping[int, int]  # Cityscapes labelId -> train id
    vistas: Mapping[str, int] = field(default_factory=dict)  # Mapillary Vistas label name -> train id
    subset13: tuple[int, ...] | None = None  # train ids of the 13-class mIoU*
    label_ids: tuple[int, ...] = ()  # train id -> the Cityscapes labelId a prediction of it is written as

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def colorize(self, train_ids: np.ndarray) -> np.ndarray:
        """(H, W) train ids -> (H, W, 3) uint8 colours; ignored pixels black."""
        pal = np.zeros((256, 3), np.uint8)
        pal[:self.n_classes] = self.palette
        return pal[np.asarray(train_ids, dtype=np.uint8)]

    def to_label_ids(self, train_ids: np.ndarray) -> np.ndarray:
        """(H, W) train ids -> (H, W) uint8 Cityscapes labelIds, as the benchmark takes them: each class as its
        labelId (`label_ids`), ignored pixels (255) as 0, 'unlabeled'."""
        lut = np.zeros(256, np.uint8)
        lut[:self.n_classes] = self.label_ids
        return lut[np.asarray(train_ids, dtype=np.uint8)]


Protocol = ClassProtocol  # its former name (it shadowed `typing.Protocol`)


def lookup_table(mapping: Mapping[int, int], size: int = 65536) -> np.ndarray:
    """A uint8 table that maps raw ids to train ids, 255 elsewhere."""
    lut = np.full(size, 255, np.uint8)
    for k, v in mapping.items():
        lut[k] = v
    return lut


_CS_PALETTE = {'road': (128, 64, 128), 'sidewalk': (244, 35, 232), 'building': (70, 70, 70),
               'wall': (102, 102, 156), 'fence': (190, 153, 153), 'pole': (153, 153, 153),
               'light': (250, 170, 30), 'sign': (220, 220, 0), 'vegetation': (107, 142, 35),
               'sky': (70, 130, 180), 'person': (220, 20, 60), 'rider': (255, 0, 0), 'car': (0, 0, 142),
               'bus': (0, 60, 100), 'motorcycle': (0, 0, 230), 'bicycle': (119, 11, 32)}
_CLASSES16 = tuple(_CS_PALETTE)
_SYNTHIA16 = {3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 1: 9, 10: 10, 17: 11, 8: 12, 19: 13,
              12: 14, 11: 15}
_CITYSCAPES16 = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 23: 9, 24: 10, 25: 11, 26: 12,
                 28: 13, 32: 14, 33: 15}

# Cityscapes labelId -> categoryId - 1 (flat, construction, object, nature, sky, human, vehicle); void ignored
CITYSCAPES_CATEGORY = {**dict.fromkeys((7, 8, 9, 10), 0), **dict.fromkeys(range(11, 17), 1),
                       **dict.fromkeys(range(17, 21), 2), **dict.fromkeys((21, 22), 3), 23: 4,
                       **dict.fromkeys((24, 25), 5), **dict.fromkeys(range(26, 34), 6)}
# the labelId written for each 16-class train id: the inverse of _CITYSCAPES16
_LABEL_IDS16 = tuple(sorted(_CITYSCAPES16, key=_CITYSCAPES16.get))
_CLASSES7 = ('flat', 'construction', 'object', 'nature', 'sky', 'human', 'vehicle')
_PALETTE7 = ((128, 64, 128), (70, 70, 70), (250, 170, 30), (107, 142, 35), (70, 130, 180), (220, 20, 60),
             (0, 0, 142))
_SYNTHIA7 = {3: 0, 4: 0, 22: 0, 2: 1, 5: 1, 7: 2, 9: 2, 15: 2, 6: 3, 1: 4, 10: 5, 8: 6, 11: 6}
_VISTAS7_NAMES = {
    0: ('bike lane', 'crosswalk - plain', 'curb cut', 'parking', 'pedestrian area', 'rail track', 'road',
        'service lane', 'sidewalk', 'lane marking - crosswalk', 'lane marking - general', 'terrain'),
    1: ('curb', 'fence', 'guard rail', 'barrier', 'wall', 'bridge', 'building', 'tunnel'),
    2: ('pothole', 'street light', 'pole', 'traffic sign frame', 'utility pole', 'traffic light',
        'traffic sign (back)', 'traffic sign (front)'),
    3: ('vegetation',), 4: ('sky',), 5: ('person', 'bicyclist', 'motorcyclist', 'other rider'),
    6: ('bicycle', 'boat', 'bus', 'car', 'caravan', 'motorcycle', 'on rails', 'other vehicle', 'trailer',
        'truck', 'wheeled slow'),
}
_VISTAS7 = {name: tid for tid, names in _VISTAS7_NAMES.items() for name in names}
# a representative labelId of each category, written for a 7-class prediction: road, building, pole, vegetation, sky,
# person, car; cityscapesScripts' category-level evaluation counts each as its category
_LABEL_IDS7 = (7, 11, 17, 21, 23, 24, 26)

PROTOCOLS = {
    16: ClassProtocol('16', _CLASSES16, tuple(_CS_PALETTE.values()), _SYNTHIA16, _CITYSCAPES16,
                      subset13=tuple(i for i, c in enumerate(_CLASSES16) if c not in ('wall', 'fence', 'pole')),
                      label_ids=_LABEL_IDS16),
    7: ClassProtocol('7', _CLASSES7, _PALETTE7, _SYNTHIA7, CITYSCAPES_CATEGORY, _VISTAS7, label_ids=_LABEL_IDS7),
}


def get_protocol(n_classes: int | str) -> ClassProtocol:
    """The protocol for 16 or 7 classes."""
    try:
        return PROTOCOLS[int(n_classes)]
    except (KeyError, ValueError):
        raise ValueError(f'unknown class protocol {n_classes!r}; valid: 16, 7') from None
