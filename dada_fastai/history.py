"""A run's history: its loss terms, learning rates and validation metrics by iteration in `history.csv` (continued
exactly after a resume), `curves.png` redrawn from it, the same rows sent to TensorBoard and Weights & Biases
(`--log`), and the wiring that gives a run's Learner its history and progress (`add_run_logging`). One row, many
sinks: every logger receives the rows that history.csv holds, so that a resumed run's logs match an uninterrupted
one's."""
from __future__ import annotations

import importlib
import math
import os
import time
import warnings
from pathlib import Path

import torch
from fastai.callback.core import Callback
from fastai.callback.progress import ProgressCallback
from fastai.torch_core import rank_distrib
from fastcore.basics import noop

from .callbacks import LineProgress, TermMeter, TrainTerm, batch_terms, finding_lr, learning_rates, progress_mode
from .callbacks import default_intervals, nice_interval, validation_values  # noqa: F401 (public here too)
from .errors import ConfigError
from .plots import draw_curves, fixed_images, prediction_grid
from .run_folder import RunFolder, is_validation_row, read_history, write_history_rows

__all__ = ['LOGGERS', 'nice_interval', 'default_intervals', 'read_history', 'HistoryLogger', 'check_loggers',
           'add_run_logging', 'close_loggers']

LOGGERS = ('tensorboard', 'wandb')  # what --log takes (each installed by the extra of its name)


# ---------------------------------------------------------------------------------------------------------
# The history logger
# ---------------------------------------------------------------------------------------------------------
def _fmt(v) -> str:
    if v is None:
        return ''
    v = float(v)
    if math.isnan(v):
        return 'nan'
    return f'{v:.6g}'


def _columns(learn) -> list[str]:
    dada = getattr(learn, 'dada', None)
    terms = dada.term_names() if dada is not None else []
    opt = getattr(learn, 'opt', None)
    lrs = ['lr', 'lr_head'] if opt is None or len(opt.hypers) > 1 else ['lr']
    if dada is not None and dada.discriminators:
        lrs.append('lr_d')
    valid = ['valid_loss'] + [m.name for m in learn.metrics if not isinstance(m, TrainTerm)]
    return ['iter', 'time'] + terms + ['train_loss'] + lrs + valid


class HistoryLogger(Callback):
    """The run's history by iteration in `history.csv` (fastai's `CSVLogger`, by iteration instead of by
    epoch): every `every` iterations the loss terms averaged since the previous row, the source loss and the
    learning rates; after each validation a row with the validation loss and metrics (training columns
    empty). Rows are flushed as they are written; `time` counts the seconds of training across resumes.

    When a fit starts at iteration k (a resume), rows after k (written after the checkpoint, before a crash)
    are dropped, so the history goes on without duplicates; a missing or damaged file is restarted or
    rebuilt from its readable rows, with a warning. `curves.png` is redrawn after a validation when
    `curves_every` seconds have passed since it was last drawn (drawing takes about a second on a CPU), and at
    the end of a fit or of the run when a validation is not drawn yet. `sinks`
    (TensorBoard, W&B) receive the same rows, and every `image_every` iterations a grid of target image /
    prediction / predicted depth. Only the main process writes."""
    order = -11  # before TrainEvalCallback (-10): see the events below

    def __init__(self, run_dir: str | Path, every: int = 1, sinks=(), image_every: int | None = None,
                 n_images: int = 4, curves_every: float = 30.):
        self.folder, self.every, self.sinks = RunFolder(run_dir), max(int(every), 1), list(sinks)
        self.image_every, self.n_images = image_every, n_images
        self.curves_every, self.curves_drawn, self.curves_due = curves_every, None, False
        self.prepared, self.images, self.warned, self.fitting, self.iter_at_fit = False, None, set(), False, 0
        self.iteration = None  # the last training iteration this callback saw

    @property
    def name(self) -> str:
        return 'history'

    @property
    def run_dir(self) -> Path:
        return self.folder.path

    @property
    def path(self) -> Path:
        return self.folder.history

    @property
    def active(self) -> bool:
        return rank_distrib() == 0 and not finding_lr(self.learn)

    # -- the file ---------------------------------------------------------------------------------------
    def _prepare(self, upto: int) -> None:
        """Continue the history at iteration `upto`: the rows up to it kept (and repaired when needed)."""
        self.columns = _columns(self.learn)
        header, rows, damaged, problem = read_history(self.path)
        rewrite = False
        if problem == 'missing':
            if upto > 0:
                warnings.warn(f'{self.path} is missing: the history restarts at iteration {upto}')
            rewrite = True
        elif problem:
            kept = self.folder.damaged_history
            os.replace(self.path, kept)
            warnings.warn(f'{self.path} is damaged ({problem}): kept as {kept.name}; the history restarts at '
                          f'iteration {upto}')
            rewrite = True
        elif damaged:
            warnings.warn(f'{self.path}: {damaged} damaged row{"s" if damaged > 1 else ""} left out; the history '
                          f'goes on from iteration {upto}')
            rewrite = True
        kept = [r for r in rows if int(r['iter']) <= upto] if upto > 0 else []
        rewrite = rewrite or len(kept) != len(rows) or header != self.columns
        if rewrite:
            write_history_rows(self.path, self.columns, kept, append=False)
        valid = [int(r['iter']) for r in kept if is_validation_row(r)]
        self.last_valid = max(valid) if valid else None
        self.time_base = max((float(r['time']) for r in kept if r.get('time')), default=0.)
        self.session_start = time.time()
        self.prepared = True

    def _elapsed(self) -> float:
        return self.time_base + time.time() - self.session_start

    def _write(self, row: dict, valid: bool = False) -> None:
        write_history_rows(self.path, self.columns, [{k: (_fmt(v) if k != 'iter' else str(v)) for k, v in row.items()}],
                    append=True)
        step = int(row['iter'])
        tags = {_tag(k, valid): v for k, v in row.items() if k not in ('iter', 'time') and v is not None}
        for sink in self.sinks:
            self._safely(sink.scalars, step, tags)

    def _safely(self, fn, *args) -> None:
        """A logger that fails warns once and never stops training."""
        try:
            fn(*args)
        except Exception as e:
            key = type(fn.__self__).__name__ if hasattr(fn, '__self__') else fn.__name__
            if key not in self.warned:
                self.warned.add(key)
                warnings.warn(f'{key}: {type(e).__name__}: {e}')

    # -- events -----------------------------------------------------------------------------------------
    # fastai's `validate` fires before_fit and after_fit too (and resets `train_iter` to 0 in between): a fit is
    # known by its first before_train, and the iteration of a validation outside a fit is taken before the reset
    # (this callback runs before TrainEvalCallback, so in after_batch `train_iter` does not count the batch yet).
    def before_fit(self):
        self.fitting, self.iter_at_fit = False, int(getattr(self.learn, 'train_iter', 0) or 0)

    def before_train(self):
        if self.fitting or not self.active:
            return
        self.fitting, self.meter = True, TermMeter()
        self.iteration = self.train_iter  # the checkpoint's when resuming (ResumeFrom set it in before_fit)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._prepare(self.iteration)
        for sink in self.sinks:
            self._safely(sink.open, self.learn, self.run_dir, self.iteration)
        if self.sinks and self.image_every and self.images is None:
            self.images = fixed_images(self.learn, self.n_images)

    def after_batch(self):
        if not self.training or not self.fitting:
            return
        self.meter.add(batch_terms(self.learn))
        self.iteration = it = self.train_iter + 1
        if it % self.every == 0:
            self._train_row()
        if self.images is not None and self.image_every and it % self.image_every == 0:
            try:
                grid = prediction_grid(self.learn, self.images)
            except Exception as e:
                self.images = None
                warnings.warn(f'no more image grids: {type(e).__name__}: {e}')
                return
            for sink in self.sinks:
                self._safely(sink.image, it, grid)

    def _train_row(self) -> None:
        if not self.meter.n:
            return
        row = {'iter': self.iteration, 'time': self._elapsed(), **self.meter.pop(), **learning_rates(self.learn)}
        self._write(row)

    def after_validate(self):
        if not self.active:
            return
        values = validation_values(self.learn)
        if values is None:
            return
        if not self.fitting:  # the final evaluation, or a resume of a finished run
            self.iteration = getattr(self, 'iteration', None) or self.iter_at_fit
        if not self.prepared:
            self._prepare(self.iteration)
        if self.last_valid != self.iteration:
            self._write({'iter': self.iteration, 'time': self._elapsed(), **values}, valid=True)
            self.last_valid = self.iteration
            for sink in self.sinks:
                self._safely(sink.flush)
        self.curves_due = True
        if not self.fitting or self.curves_drawn is None or time.time() - self.curves_drawn >= self.curves_every:
            self._draw_curves()

    def _draw_curves(self) -> None:
        self._safely(draw_curves, self.path, self.folder.curves)
        self.curves_drawn, self.curves_due = time.time(), False

    def after_fit(self):
        if self.fitting:
            self._train_row()  # the iterations since the last row
            for sink in self.sinks:
                self._safely(sink.flush)
            if self.curves_due:
                self._draw_curves()
        self.fitting = False

    def close(self, exit_code: int = 0) -> None:
        """Close the loggers (at the end of the run, or when it fails), and draw the validations not drawn yet."""
        if self.curves_due:  # set by a validation of the main process only
            self._draw_curves()
        for sink in self.sinks:
            self._safely(sink.close, exit_code)


def _tag(name: str, valid: bool = False) -> str:
    """The TensorBoard / W&B name of a history column: train/seg, lr/lr_head, valid/miou, valid/loss..."""
    if valid:
        return f'valid/{name.removeprefix("valid_")}'
    return f'lr/{name}' if name.startswith('lr') else f'train/{name.removeprefix("train_")}'


def check_loggers(log: str | None) -> list[str]:
    """The loggers that `--log` asks for ('tensorboard', 'wandb', comma-separated); a one-line error naming
    the extra to install when a package is missing."""
    names = [n.strip() for n in (log or '').split(',') if n.strip()]
    for n in names:
        if n not in LOGGERS:
            raise ConfigError(f'invalid log {n!r}; valid: {", ".join(LOGGERS)} (comma-separated for both)')
        _sink_module(n).require()
    return names


def _sink_module(name: str):
    """The module of a `--log` logger, `callbacks.tensorboard` or `callbacks.wandb` (imported only when asked for:
    each imports its optional package, and only it does)."""
    return importlib.import_module(f'.callbacks.{name}', __package__)


_SINKS = {'tensorboard': 'TensorBoardSink', 'wandb': 'WandbSink'}  # each logger's sink class in its module


def add_run_logging(learn, cfg, run_dir: str | Path | None, stage: str = 'training') -> None:
    """Give `learn` what `cfg` asks for: plain progress lines instead of bars when the output is not a
    terminal (`progress`; their first line names the `stage`), and, with a run folder, the history, curves and
    `--log` loggers."""
    device = getattr(learn.dls, 'device', None)
    on_gpu = device is not None and torch.device(device).type != 'cpu'
    auto = default_intervals(cfg.iters, fast=cfg.mode == 'fast' and on_gpu)  # reading back costs on a GPU only
    loggers = check_loggers(getattr(cfg, 'log', None))
    mode = progress_mode(getattr(cfg, 'progress', 'auto'))
    if mode != 'bar':
        progress = getattr(learn, 'progress', None)
        if progress is not None:
            learn.remove_cb(progress)
        learn.remove_cb(ProgressCallback)
        if mode == 'lines':
            learn.add_cb(LineProgress(getattr(cfg, 'print_every', None) or auto['print_every'], stage=stage))
        else:
            learn.logger = noop
    if run_dir is None:
        return
    sinks = [getattr(_sink_module(n), _SINKS[n])() for n in loggers]
    learn.add_cb(HistoryLogger(run_dir, getattr(cfg, 'log_every', None) or auto['log_every'], sinks,
                               getattr(cfg, 'image_every', None) or auto['image_every']))


def close_loggers(learn, exit_code: int = 0) -> None:
    """Close the TensorBoard and W&B loggers of `learn`'s history and draw its last validations (end of the run)."""
    history = getattr(learn, 'history', None)
    if isinstance(history, HistoryLogger):
        history.close(exit_code)


