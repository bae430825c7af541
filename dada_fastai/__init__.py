"""dada-fastai: depth-aware unsupervised domain adaptation (DADA) for semantic segmentation, on fastai.

The main names are importable from the package itself (`from dada_fastai import train, dada_dataloaders,
dada_learner`); each is loaded on first use, so that importing one module (or running the command line) does not load
the rest.
"""
from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

from .version import __version__  # settings.ini's in a checkout, else the installed package's

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time each name loads on first use (`__getattr__`)
    from .config import TrainConfig, resolve_config  # noqa: F401
    from .data import DADADataLoaders, TensorClassMap, TensorDepth, dada_datablock, dada_dataloaders, normalization  # noqa: F401
    from .data import target_datablock  # noqa: F401
    from .datasets import open_dataset  # noqa: F401
    from .errors import DatasetError, UserError  # noqa: F401
    from .inference import LoadedModel, evaluate_model, load_model, predict_files  # noqa: F401
    from .learner import DADALearner, dada_learner, run_iteration  # noqa: F401
    from .meta import RunMeta  # noqa: F401
    from .methods import METHODS, MethodConfig, method_config  # noqa: F401
    from .model import DADA, Discriminator  # noqa: F401
    from .preprocess import image_to_rgb  # noqa: F401
    from .protocols import PROTOCOLS, ClassProtocol, Protocol, get_protocol  # noqa: F401
    from .runs import resume, train  # noqa: F401
    from .toy import ToyConfig, make_toy_pair  # noqa: F401


_EXPORTS = {  # public name -> the module that defines it (keep in step with the TYPE_CHECKING block below)
    'train': 'runs', 'resume': 'runs', 'TrainConfig': 'config', 'resolve_config': 'config',
    'dada_dataloaders': 'data', 'DADADataLoaders': 'data', 'dada_datablock': 'data', 'target_datablock': 'data',
    'TensorDepth': 'data', 'TensorClassMap': 'data', 'image_to_rgb': 'preprocess', 'normalization': 'data',
    'dada_learner': 'learner', 'DADALearner': 'learner', 'run_iteration': 'learner',
    'METHODS': 'methods', 'MethodConfig': 'methods', 'method_config': 'methods', 'RunMeta': 'meta',
    'load_model': 'inference', 'LoadedModel': 'inference', 'evaluate_model': 'inference',
    'predict_files': 'inference',
    'ClassProtocol': 'protocols', 'Protocol': 'protocols', 'PROTOCOLS': 'protocols', 'get_protocol': 'protocols',
    'open_dataset': 'datasets', 'DatasetError': 'errors', 'UserError': 'errors',
    'DADA': 'model', 'Discriminator': 'model', 'make_toy_pair': 'toy', 'ToyConfig': 'toy',
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
