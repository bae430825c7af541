"""dada-fastai: depth-aware unsupervised domain adaptation (DADA) for semantic segmentation, on fastai.

The main names are importable from the package itself (`from dada_fastai import dada_dataloaders, dada_learner`);
each is loaded on first use, so that importing one module (or running the command line) does not load the rest.
"""
from __future__ import annotations

from importlib import import_module


def _version() -> str:
    """The version in settings.ini (a checkout or an editable install), else the installed package's."""
    from configparser import ConfigParser
    from pathlib import Path
    ini = Path(__file__).resolve().parent.parent / 'settings.ini'
    if ini.is_file():
        cfg = ConfigParser(delimiters=['='])
        cfg.read(ini, encoding='utf-8')
        if cfg.get('DEFAULT', 'lib_path', fallback=None) == __name__ and cfg.get('DEFAULT', 'version', fallback=None):
            return cfg['DEFAULT']['version']
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version('dada-fastai')
    except PackageNotFoundError:
        return '0+unknown'


__version__ = _version()

_EXPORTS = {  # public name -> the module that defines it
    'dada_dataloaders': 'data', 'DADADataLoaders': 'data', 'dada_datablock': 'data', 'target_datablock': 'data',
    'TensorDepth': 'data', 'TensorClassMap': 'data', 'image_to_rgb': 'data', 'normalization': 'data',
    'dada_learner': 'learner', 'DADALearner': 'learner', 'METHODS': 'learner', 'MethodConfig': 'learner',
    'method_config': 'learner', 'RunMeta': 'meta',
    'load_model': 'inference', 'LoadedModel': 'inference', 'evaluate_model': 'inference',
    'predict_files': 'inference',
    'Protocol': 'protocols', 'PROTOCOLS': 'protocols', 'get_protocol': 'protocols',
    'open_dataset': 'datasets', 'DatasetError': 'datasets',
    'DADA': 'model', 'Discriminator': 'model',
}
__all__ = ['__version__', *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(import_module(f'.{_EXPORTS[name]}', __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
