"""`RunMeta`: what describes a trained model and the run it comes from, in one frozen object that the Learner
owns (`learn.meta`), checkpoints and exports write (`to_dict`, as JSON) and `inference.load_model` reads back
(`from_dict`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

from .methods import MethodConfig
from .protocols import ClassProtocol, get_protocol

__all__ = ['RunMeta', 'MODEL_KEYS']

MODEL_KEYS = ('arch', 'n_classes', 'depth_block', 'feature_fusion', 'adapt', 'norm', 'layers', 'fit', 'target_size')
"""The keys of the model metadata in checkpoints and exports (`to_dict`), as files have always held them."""


@dataclass(frozen=True)
class RunMeta:
    """What describes a trained model: its class set, architecture, the parts of DADA it has, how its input
    images were prepared; and how the run trained it (mode, BatchNorm, the run's configuration when a
    `dada-fastai train` run built it). Built once by `dada_learner`; never changed afterwards."""
    n_classes: int  # the protocol's class count (16 or 7)
    arch: str  # timm model name, or the reference backbone 'deeplabv2_resnet101'
    depth_block: bool = True  # the method's depth block
    feature_fusion: bool = True  # the method's feature fusion (needs the depth block)
    adapt: tuple[str, ...] = ()  # the maps the discriminators see: 'surprisal', 'depth', 'dada'
    layers: tuple[int, ...] | None = None  # blocks per stage of the reference backbone (None: its own)
    norm: str | None = None  # image normalisation: 'reference', 'timm', 'imagenet' or 'none' (None: unknown)
    source_size: tuple[int, int] | None = None  # (H, W) the source images were brought to
    target_size: tuple[int, int] | None = None  # (H, W) the target images were brought to (None: unknown)
    fit: Literal['stretch', 'pad'] = 'stretch'  # how: stretched, or aspect kept and padded (Vistas)
    mode: Literal['faithful', 'fast'] = 'faithful'  # the training mode
    bn: Literal['batch', 'frozen'] = 'batch'  # BatchNorm in training: batch statistics or frozen
    self_training: bool = False  # the method self-trains (a mean teacher's pseudo-labels on mixed images)
    config: Mapping[str, Any] | None = field(default=None, compare=False)  # the run's `TrainConfig.to_dict()`

    def __post_init__(self):
        tup = lambda v: tuple(int(x) for x in v) if v is not None else None  # noqa: E731
        object.__setattr__(self, 'adapt', tuple(self.adapt))
        for name in ('layers', 'source_size', 'target_size'):
            object.__setattr__(self, name, tup(getattr(self, name)) or None)
        if self.config is not None:
            object.__setattr__(self, 'config', dict(self.config))

    @property
    def protocol(self) -> ClassProtocol:
        """The class set of `n_classes` (names, palette, id mappings)."""
        return get_protocol(self.n_classes)

    @property
    def method(self) -> MethodConfig:
        """The method's parts as a `methods.MethodConfig`."""
        return MethodConfig(self.depth_block, self.feature_fusion, self.adapt, self.self_training)

    def to_dict(self) -> dict:
        """The model metadata written into checkpoints and exports (JSON-ready; the keys of `MODEL_KEYS`)."""
        lst = lambda v: list(v) if v is not None else None  # noqa: E731
        return {'arch': self.arch, 'n_classes': self.n_classes, 'depth_block': self.depth_block,
                'feature_fusion': self.feature_fusion, 'adapt': list(self.adapt), 'norm': self.norm,
                'layers': lst(self.layers), 'fit': self.fit, 'target_size': lst(self.target_size)}

    @classmethod
    def from_dict(cls, meta: Mapping, config: Mapping | None = None) -> 'RunMeta':
        """A model file's metadata (`to_dict`; files of any version of this package, checked by
        `checkpoint.load_inference_file`), with the run's configuration beside it when there is one."""
        adapt, norm = meta.get('adapt'), meta.get('norm')
        return cls(int(meta['n_classes']), str(meta['arch']), bool(meta.get('depth_block', True)),
                   bool(meta.get('feature_fusion', True)),
                   tuple(a for a in adapt if isinstance(a, str)) if isinstance(adapt, list) else (),
                   layers=meta.get('layers') or None, norm=norm if isinstance(norm, str) else None,
                   target_size=meta.get('target_size') or None, fit=meta.get('fit') or 'stretch', config=config)

    def __getitem__(self, key: str):
        """The file metadata's values by key (`meta['fit']`), as the dictionary `to_dict` gives."""
        return self.to_dict()[key]

    def get(self, key: str, default=None):
        """`meta.get(key)` of the file metadata's dictionary."""
        return self.to_dict().get(key, default)
