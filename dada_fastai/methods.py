"""The methods and ablations as configurations: which parts of DADA a method has (depth block, feature fusion, the
maps its discriminators see, self-training). A plain table, importable without torch or fastai, so that the command
line and the configuration can list the method names cheaply."""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ['ADAPT_MAPS', 'MethodConfig', 'METHODS', 'method_config']

ADAPT_MAPS = ('surprisal', 'depth', 'dada')  # what a discriminator can look at


@dataclass(frozen=True)
class MethodConfig:
    """Which parts of DADA are on: the depth block, feature fusion, the maps the discriminators see, and
    self-training (a mean teacher's pseudo-labels on mixed images: `callbacks.self_training`)."""
    depth_block: bool = True
    feature_fusion: bool = True
    adapt: tuple[str, ...] = ('dada',)  # one discriminator per map: 'surprisal', 'depth', 'dada'
    self_training: bool = False

    def __post_init__(self):
        object.__setattr__(self, 'adapt', tuple(self.adapt))
        bad = [a for a in self.adapt if a not in ADAPT_MAPS]
        if bad:
            raise ValueError(f'unknown adaptation map {bad[0]!r}; valid: {", ".join(ADAPT_MAPS)}')
        if not self.depth_block and (self.feature_fusion or set(self.adapt) & {'depth', 'dada'}):
            raise ValueError('feature fusion and depth/DADA adaptation need the depth block')

    @property
    def network(self) -> MethodConfig:
        """The segmenter this method trains (depth block and fusion as it has them), without its adaptation: what a
        warm start or a model file of the same network has."""
        return MethodConfig(self.depth_block, self.feature_fusion, ())


METHODS: dict[str, MethodConfig] = {
    'source_only': MethodConfig(False, False, ()),  # S1: DeepLab-v2 trained on the source
    'advent': MethodConfig(False, False, ('surprisal',)),  # S2: AdvEnt
    's3': MethodConfig(True, True, ('surprisal',)),  # surprisal adaptation + feature fusion
    's4': MethodConfig(True, False, ('depth',)),  # depth adaptation
    's5': MethodConfig(True, True, ('depth',)),  # depth adaptation + feature fusion
    's6': MethodConfig(True, True, ('surprisal', 'depth')),  # two discriminators
    'dada': MethodConfig(True, True, ('dada',)),  # S7: DADA
}
METHODS |= {'s1': METHODS['source_only'], 's2': METHODS['advent'], 's7': METHODS['dada']}
METHODS['depth_source_only'] = MethodConfig(True, True, ())  # DADA's network trained on the source alone
METHODS['dacs'] = MethodConfig(False, False, (), self_training=True)  # DACS: self-training on DeepLab-v2
METHODS['dada_st'] = MethodConfig(True, True, ('dada',), self_training=True)  # DADA with self-training


def method_config(method: str | MethodConfig) -> MethodConfig:
    """A method name (source_only, advent, dada, s1..s7, depth_source_only,
    dacs, dada_st) -> its configuration."""
    if isinstance(method, MethodConfig):
        return method
    try:
        return METHODS[method.lower()]
    except KeyError:
        raise ValueError(f'unknown method {method!r}; valid: {", ".join(METHODS)}') from None
