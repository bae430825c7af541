"""TensorBoard logging of a run's history (`--log tensorboard`): the only module that imports TensorBoard."""
from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np

from ..errors import RunError

__all__ = ['TensorBoardSink', 'require']


def require() -> None:
    """Raise `RunError` in one line, naming the extra to install, when TensorBoard is missing (torch's writer needs
    the tensorboard package itself)."""
    try:
        for module in ('tensorboard', 'torch.utils.tensorboard'):
            importlib.import_module(module)
    except ImportError:
        raise RunError('--log tensorboard needs the tensorboard package: pip install "dada-fastai[tensorboard]" '
                       '(from a checkout: pip install ".[tensorboard]")') from None


class TensorBoardSink:
    """The history's rows as TensorBoard scalars (torch's `SummaryWriter`, event files in
    `RUN/tensorboard`) and the image grids. After a resume at iteration k, TensorBoard discards the steps
    after k that the previous session had written (`purge_step`)."""

    def open(self, learn, run_dir: Path, start: int) -> None:
        if getattr(self, 'writer', None) is not None:
            return
        from torch.utils.tensorboard import SummaryWriter
        from ..run_folder import RunFolder
        self.writer = SummaryWriter(log_dir=str(RunFolder(run_dir).tensorboard), purge_step=start + 1 if start else None,
                                    flush_secs=30)

    def scalars(self, step: int, values: dict) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)

    def image(self, step: int, grid: np.ndarray) -> None:
        self.writer.add_image('valid/image_prediction_depth', grid, step, dataformats='HWC')

    def flush(self) -> None:
        self.writer.flush()

    def close(self, exit_code: int = 0) -> None:
        if getattr(self, 'writer', None) is not None:
            self.writer.close()
            self.writer = None
