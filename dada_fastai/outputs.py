"""What `dada-fastai predict` writes for each image, every file named from the image's own stem (a Cityscapes
`<city>_<seq>_<frame>_leftImg8bit.png` keeps its identifiers): the colour pictures (`color`), the image with its
classes blended over it (`overlay`), the protocol's class indices (`train-ids`), the Cityscapes labelIds the benchmark
takes (`label-ids`), the predicted depth as a 16-bit PNG in the convention of the run's source (`depth`, with
`depth_encoding.json` beside it) and the raw arrays (`npy`). Which runs have labelIds to write back to, and how their
depth is encoded, are decided here from the run's configuration."""
from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Mapping, Sequence

import numpy as np

from .errors import ConfigError
from .image_files import write_png
from .plots import depth_to_rgb
from .protocols import ClassProtocol
from .storage import atomic_write_bytes

__all__ = ['FORMATS', 'DEPTH_ENCODING_FILE', 'OVERLAY_OPACITY', 'parse_formats', 'DepthEncoding', 'depth_encoding',
           'label_ids_problem', 'check_formats', 'overlay', 'write_outputs', 'write_depth_encoding']

FORMATS = ('color', 'overlay', 'train-ids', 'label-ids', 'depth', 'npy')
DEPTH_ENCODING_FILE = 'depth_encoding.json'  # one per predictions folder: how its depth files are encoded
OVERLAY_OPACITY = 0.5  # the weight of the class colours over the image (mmsegmentation's default)


def parse_formats(value: str | Sequence[str]) -> tuple[str, ...]:
    """'color,label-ids' (or a list of names) -> ('color', 'label-ids'), in the order given, each once; ConfigError
    naming an unknown or missing one."""
    names = value.split(',') if isinstance(value, str) else list(value)
    names = [str(n).strip().lower() for n in names]
    if not names or any(not n for n in names):
        raise ConfigError(f'--format must be a comma list of {", ".join(FORMATS)}, not {value!r}')
    unknown = [n for n in names if n not in FORMATS]
    if unknown:
        raise ConfigError(f'unknown --format {unknown[0]!r}; valid: {", ".join(FORMATS)} (a comma list, e.g. '
                          'color,label-ids)')
    return tuple(dict.fromkeys(names))


# ---------------------------------------------------------------------------------------------------------
# Depth
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DepthEncoding:
    """How `--format depth` writes the network's inverse depth z as a 16-bit PNG, in the convention of the depth the
    run learned from: SYNTHIA's (`synthia_cm`: the targets are 65536 / (cm + 1) times `depth_scale`, so depth in
    centimetres = 65536 * depth_scale / z - 1, clipped to 1..65535; 0 = no depth) or Cityscapes' disparity
    (`cityscapes_disparity`: the targets are (p - 1) / 256 times `depth_scale`, so p = 256 * z / depth_scale + 1,
    clipped to 1..65535; 0 = invalid)."""
    kind: Literal['synthia_cm', 'cityscapes_disparity']
    depth_scale: float = 1.  # the run's `depth_scale`: what the depth targets were multiplied by
    source: str | None = None  # the run's source ('KIND:DIR'; None: the built-in toy pair, or unknown)
    assumed: bool = False  # no run configuration beside the model: the paper's depth_scale (1) and SYNTHIA assumed

    @property
    def suffix(self) -> str:
        """The file name's ending after the image's stem."""
        return '_depth_cm.png' if self.kind == 'synthia_cm' else '_disparity.png'

    def encode(self, z: np.ndarray) -> np.ndarray:
        """The network's inverse depth (H, W) -> uint16 values of the convention (0 where z is not positive)."""
        z = np.asarray(z, np.float64)
        valid = np.isfinite(z) & (z > 0)
        safe = np.where(valid, z, 1.)
        value = 65536 * self.depth_scale / safe - 1 if self.kind == 'synthia_cm' else 256 * safe / self.depth_scale + 1
        return np.where(valid, np.clip(np.rint(value), 1, 65535), 0).astype(np.uint16)

    def decode(self, values: np.ndarray) -> np.ndarray:
        """uint16 values of the convention -> the network's inverse depth z (float32, NaN where 0)."""
        v = np.asarray(values, np.float64)
        z = 65536 * self.depth_scale / (v + 1) if self.kind == 'synthia_cm' else (v - 1) * self.depth_scale / 256
        return np.where(v > 0, z, np.nan).astype(np.float32)

    def describe(self) -> dict:
        """What `depth_encoding.json` says: the files, their encoding, unit and how they were computed."""
        if self.kind == 'synthia_cm':
            info = {'encoding': 'synthia_cm', 'unit': 'centimetres',
                    'decode': 'depth_cm = value for value > 0; 0: no depth',
                    'computed': f'value = round(65536 * {self.depth_scale:g} / z - 1), clipped to 1..65535, where z is '
                                'the inverse depth the network predicts (its training targets were SYNTHIA\'s '
                                f'65536 / (cm + 1) times depth_scale {self.depth_scale:g}); 0 where z <= 0'}
        else:
            info = {'encoding': 'cityscapes_disparity', 'unit': 'disparity in pixels, stored as 256 * d + 1',
                    'decode': 'disparity = (value - 1) / 256 for value > 0; 0: invalid; depth in metres = '
                              'baseline * fx / disparity (the camera/*.json of Cityscapes)',
                    'computed': f'value = round(256 * z / {self.depth_scale:g} + 1), clipped to 1..65535, where z is '
                                'the inverse depth the network predicts (its training targets were Cityscapes\' disparity '
                                f'(p - 1) / 256 times depth_scale {self.depth_scale:g}); 0 where z <= 0'}
        info = {'file': f'<image stem>{self.suffix}', 'dtype': 'uint16 PNG', **info,
                'depth_scale': self.depth_scale, 'source': self.source or 'the built-in toy pair (SYNTHIA layout)',
                'inverse_depth_npy': 'z itself, float32 (with --format npy: <image stem>_inv_depth.npy)',
                'note': "the scale is the source's: on another camera (the target's) it is the source's scale, up to "
                        'the network\'s error'}
        if self.assumed:
            info['source'] = 'unknown'
            info['note'] = ('the model has no run configuration (config.yaml) beside it: SYNTHIA\'s convention and the '
                            "paper's depth_scale 1 are assumed; " + info['note'])
        return info


def depth_encoding(run_config: Mapping | None) -> DepthEncoding:
    """The encoding of a run's depth from its configuration: the convention of its source (SYNTHIA, a folder dataset
    and the toy pair's source: centimetres; Cityscapes: disparity) and its `depth_scale`; ConfigError for a source
    whose depth has no such unit (Vistas has none; a folder dataset of inverse values of its own)."""
    if not run_config:
        return DepthEncoding('synthia_cm', 1., assumed=True)
    source, scale = run_config.get('source'), float(run_config.get('depth_scale') or 1.)
    kind, _, root = str(source or 'synthia:').partition(':')
    kind = kind.lower()
    if kind == 'vistas':
        raise ConfigError(f'--format depth: the run learned from {source}, which has no depth: its depth head learned '
                          'none; leave depth out of --format')
    if kind == 'folder' and _folder_depth_is_inverse(Path(root).expanduser()):
        raise ConfigError(f'--format depth: the run\'s source {source} gives inverse depth of its own (inverse: true '
                          'in its dataset.yaml), with no unit to write back; use --format npy (the inverse depth itself)')
    return DepthEncoding('cityscapes_disparity' if kind == 'cityscapes' else 'synthia_cm', scale, source)


def _folder_depth_is_inverse(root: Path) -> bool:
    """Whether a folder dataset's dataset.yaml says its depth files hold inverse depth (False when unreadable)."""
    import yaml
    try:
        depth = (yaml.safe_load((root / 'dataset.yaml').read_text()) or {}).get('depth')
    except (OSError, UnicodeDecodeError, yaml.YAMLError, AttributeError):
        return False
    return isinstance(depth, dict) and depth.get('inverse') is True


# ---------------------------------------------------------------------------------------------------------
# What a model can write
# ---------------------------------------------------------------------------------------------------------
def label_ids_problem(run_config: Mapping | None, model: str = 'the model') -> str | None:
    """Why `--format label-ids` cannot be written for a run (None when it can): Cityscapes labelIds exist for a run
    whose target is a Cityscapes folder or the built-in toy pair (its target is in the Cityscapes layout)."""
    if not run_config:
        return (f'--format label-ids: {model} has no run configuration (config.yaml) naming its target, so its '
                'dataset\'s ids are unknown; use --format train-ids (the class indices)')
    target = run_config.get('target')
    if target is None and run_config.get('source') is None:  # the built-in toy pair
        return None
    if str(target).split(':', 1)[0].lower() == 'cityscapes':
        return None
    return (f'--format label-ids writes Cityscapes labelIds, and the run\'s target is {target}, whose ids cannot be '
            'written back from its classes; use --format train-ids (the class indices)')


def check_formats(formats: Sequence[str], run_config: Mapping | None, depth_block: bool,
                  model: str = 'the model') -> DepthEncoding | None:
    """Refuse in one line what a model cannot write (label ids for a target without an id table, depth from a network
    without the depth block); the depth's encoding when `depth` or `npy` will write depth."""
    if 'label-ids' in formats and (problem := label_ids_problem(run_config, model)):
        raise ConfigError(problem)
    if 'depth' in formats and not depth_block:
        raise ConfigError(f'--format depth: {model} has no depth block (its method predicts no depth); leave depth '
                          'out of --format, or use a model of a method with depth (dada, s3 to s6, dada_st)')
    if 'depth' in formats:
        return depth_encoding(run_config)
    if 'npy' in formats and depth_block:
        try:
            return depth_encoding(run_config)
        except ConfigError:  # the arrays need no unit
            return None
    return None


# ---------------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------------
def overlay(rgb: np.ndarray, train_ids: np.ndarray, protocol: ClassProtocol,
            opacity: float = OVERLAY_OPACITY) -> np.ndarray:
    """The image (H, W, 3) uint8 with the class colours blended over it at `opacity` (unpredicted pixels kept)."""
    colours = protocol.colorize(train_ids).astype(np.float32)
    blended = (1 - opacity) * np.asarray(rgb, np.float32) + opacity * colours
    out = np.where((np.asarray(train_ids) == 255)[..., None], rgb, blended)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def write_outputs(folder: str | Path, stem: str, formats: Sequence[str], protocol: ClassProtocol,
                  train_ids: np.ndarray, probs: np.ndarray | None = None, depth: np.ndarray | None = None,
                  rgb: np.ndarray | None = None, encoding: DepthEncoding | None = None) -> list[Path]:
    """Write one image's predictions in `formats` into `folder`, named from its `stem`; returns the files written.
    `train_ids` (H, W), `probs` (C, H, W) class probabilities, `depth` (H, W) inverse depth (None without the depth
    block), `rgb` (H, W, 3) the image (for `overlay`), `encoding` the depth's (for `depth`). Each write is atomic."""
    folder = Path(folder)
    ids = np.asarray(train_ids, np.uint8)
    written = []
    for fmt in formats:
        if fmt == 'color':
            written.append(write_png(folder / f'{stem}_seg.png', protocol.colorize(ids)))
            if depth is not None:
                written.append(write_png(folder / f'{stem}_depth.png', depth_to_rgb(depth)))
        elif fmt == 'overlay':
            written.append(write_png(folder / f'{stem}_overlay.png', overlay(rgb, ids, protocol)))
        elif fmt == 'train-ids':
            written.append(write_png(folder / f'{stem}_trainIds.png', ids))
        elif fmt == 'label-ids':
            written.append(write_png(folder / f'{stem}_labelIds.png', protocol.to_label_ids(ids)))
        elif fmt == 'depth':
            written.append(write_png(folder / f'{stem}{encoding.suffix}', encoding.encode(depth)))
        elif fmt == 'npy':
            written.append(atomic_write_bytes(folder / f'{stem}_probs.npy', _npy_bytes(np.asarray(probs, np.float16))))
            if depth is not None:
                written.append(atomic_write_bytes(folder / f'{stem}_inv_depth.npy',
                                                  _npy_bytes(np.asarray(depth, np.float32))))
        else:
            raise ValueError(f'unknown format {fmt!r}; valid: {", ".join(FORMATS)}')
    return written


def write_depth_encoding(folder: str | Path, encoding: DepthEncoding) -> Path:
    """Write `depth_encoding.json` (what `DepthEncoding.describe` says) into a predictions folder."""
    return atomic_write_bytes(Path(folder) / DEPTH_ENCODING_FILE, json.dumps(encoding.describe(), indent=1).encode())
