"""Weights & Biases logging of a run's history (`--log wandb`): the only module that imports `wandb`."""
from __future__ import annotations

import importlib
import os
import uuid
from pathlib import Path

import numpy as np

from ..errors import RunError

__all__ = ['WandbSink', 'require']


def require() -> None:
    """Raise `RunError` in one line, naming the extra to install, when the `wandb` client is missing."""
    try:
        importlib.import_module('wandb')
    except ImportError:
        raise RunError('--log wandb needs the wandb package: pip install "dada-fastai[wandb]" '
                       '(from a checkout: pip install ".[wandb]")') from None


class WandbSink:
    """The history's rows and image grids in a Weights & Biases run (the `wandb` client; its mode, project
    and entity from the usual `WANDB_*` variables, e.g. `WANDB_MODE=offline`). The W&B run lives in
    `RUN/wandb`, with W&B's cache and staging folders there too unless set otherwise, and is the same run
    after a resume (its id is kept in `RUN/wandb/run_id`); steps that W&B already has are not sent again.

    fastai's `WandbCallback` is not used: it logs every batch under a step counter of its own and draws a
    validation batch when a fit starts, which would move the random streams that an exact resume relies on."""

    def open(self, learn, run_dir: Path, start: int) -> None:
        if getattr(self, 'run', None) is not None:
            return
        import wandb
        from ..run_folder import RunFolder
        folder = RunFolder(run_dir).wandb
        folder.mkdir(parents=True, exist_ok=True)
        id_file = folder / 'run_id'
        run_id = id_file.read_text().strip() if id_file.is_file() else None
        if not run_id:
            run_id = uuid.uuid4().hex[:8]
            id_file.write_text(run_id)
        dirs = {'WANDB_CACHE_DIR': 'cache', 'WANDB_DATA_DIR': 'data', 'WANDB_ARTIFACT_DIR': 'artifacts'}
        unset = [var for var in dirs if var not in os.environ]
        for var in unset:  # W&B's own folders in the run's too, for this start (its service keeps them)
            os.environ[var] = str(folder / dirs[var])
        try:
            self.run = wandb.init(project=os.environ.get('WANDB_PROJECT', 'dada-fastai'), name=Path(run_dir).name,
                                  id=run_id, resume='allow', dir=str(run_dir), config=getattr(learn, 'run_config', None))
        finally:
            for var in unset:
                os.environ.pop(var, None)
        self.first = self.run.step  # the steps logged before a resume are W&B's already

    def scalars(self, step: int, values: dict) -> None:
        if step >= self.first:
            self.run.log(values, step=step)

    def image(self, step: int, grid: np.ndarray) -> None:
        if step >= self.first:
            import wandb
            self.run.log({'valid/image_prediction_depth': wandb.Image(grid, caption='target image / prediction / '
                                                                                    'predicted depth')}, step=step)

    def flush(self) -> None:
        pass

    def close(self, exit_code: int = 0) -> None:
        if getattr(self, 'run', None) is not None:
            self.run.finish(exit_code=exit_code)
            self.run = None
