"""Progress while training: how often to report (`default_intervals`), fastai's bars and epoch table with values that
fit their columns (`TableProgress`), fewer reads from the device in fast mode (`ThrottledProgress`), and plain lines for
logs written to files (`LineProgress`); `progress_mode` picks one for the output at hand."""
from __future__ import annotations

import math
import sys
import time

from fastai.callback.progress import ProgressCallback
from fastai.torch_core import rank_distrib
from fastcore.basics import noop

from .loss_terms import TermMeter, batch_terms, validation_values
from .schedule import IterBudget, finding_lr, learning_rates

__all__ = ['nice_interval', 'default_intervals', 'fit_number', 'TableProgress', 'ThrottledProgress', 'LineProgress',
           'progress_mode', 'hms']


def nice_interval(n_iters: int, n_points: int) -> int:
    """The smallest of 1, 2, 5, 10, 20, 50, ... iterations that gives at most `n_points` points over
    `n_iters` iterations."""
    target = max(n_iters / max(n_points, 1), 1)
    k = 10 ** math.floor(math.log10(target))
    for m in (1, 2, 5, 10):
        if m * k >= target - 1e-9:
            return int(m * k)
    return int(10 * k)


def default_intervals(iters: int, fast: bool = False) -> dict[str, int]:
    """Iterations between history rows (about 1000 a run), plain progress lines (about 60) and image grids
    (about 20). In fast mode rows and lines come at most every 50 iterations: each reads the loss terms
    back from the device, which fast mode does every 50 iterations only."""
    floor = 50 if fast else 1
    return {'log_every': max(nice_interval(iters, 1000), floor), 'print_every': max(nice_interval(iters, 60), floor),
            'image_every': nice_interval(iters, 20)}


def fit_number(value: float, width: int) -> str:
    """`value` as fastai writes it (6 decimals), or with as many decimals as fit in `width` characters, or in
    scientific notation."""
    for decimals in range(6, -1, -1):
        text = f'{value:.{decimals}f}'
        if len(text) <= width:
            return text
    return f'{value:.2e}'


class TableProgress(ProgressCallback):
    """fastai's progress bars and epoch table, each value cut to fit its column. In a terminal fastprogress sizes
    a column by its name (at least 8 characters, then 2 spaces), so that a long value (a depth loss of 109.523770)
    ran into the next column."""

    @property
    def name(self) -> str:
        return 'progress'  # stands in for ProgressCallback (`learn.no_bar()` finds it)

    def _write_stats(self, log):
        if not getattr(self, 'mbar', False):
            return
        if all(isinstance(v, str) for v in log):  # the header: the column names
            self.widths = [max(len(v), 8) + 1 for v in log]  # a space always left before the next column
        widths = getattr(self, 'widths', [9] * len(log))
        self.mbar.write([fit_number(v, w) if isinstance(v, float) else str(v) for v, w in zip(log, widths)],
                        table=True)


class ThrottledProgress(TableProgress):
    """fastai's progress bar, reading the running loss from the device every `every` iterations only (each
    read waits for the GPU)."""

    def __init__(self, every: int = 50):
        self.every = every

    def after_batch(self):
        self.pbar.update(self.iter + 1)
        if hasattr(self, 'smooth_loss') and self.iter % self.every == 0:
            self.pbar.comment = f'{self.smooth_loss.item():.4f}'


def progress_mode(setting: str = 'auto', stream=None) -> str:
    """'bar' on a terminal or in a notebook, 'lines' when the output goes to a file or a pipe, for 'auto';
    else the setting itself ('bar', 'lines', 'none')."""
    if setting != 'auto':
        return setting
    from fastprogress.fastprogress import IN_NOTEBOOK
    stream = stream if stream is not None else sys.stdout
    isatty = getattr(stream, 'isatty', None)
    return 'bar' if IN_NOTEBOOK or (callable(isatty) and isatty()) else 'lines'


def hms(seconds: float) -> str:
    """Seconds as H:MM:SS."""
    seconds = int(max(seconds, 0))
    return f'{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}'


def _num(v) -> str:
    if v is None:
        return '-'
    return 'nan' if v != v else f'{v:.4g}'


class LineProgress(ProgressCallback):
    """Progress for logs written to files (batch schedulers, nohup, pipes): one line every `every`
    iterations (iteration, loss terms averaged since the previous line, learning rate, iterations per second,
    time left) and one per validation, instead of progress bars redrawn with carriage returns. Stands in for
    fastai's `ProgressCallback` (`learn.progress`). `stage` names the fit in its first line ('training', 'warm
    start')."""
    order = 60

    def __init__(self, every: int = 10, file=None, stage: str = 'training'):
        self.every, self.file, self.stage, self.fitting, self.on = max(int(every), 1), file, stage, False, False

    @property
    def name(self) -> str:
        return 'progress'

    def _print(self, text: str) -> None:
        print(text, file=self.file or sys.stdout, flush=True)

    def before_fit(self):
        self.old_logger, self.learn.logger = self.learn.logger, noop  # the lines replace fastai's epoch table
        self.fitting = False

    def before_train(self):  # the first of a fit (fastai's `validate` fires before_fit too, never before_train)
        if self.fitting:
            return
        self.fitting, self.on = True, rank_distrib() == 0 and not finding_lr(self.learn)
        if not self.on:
            return
        budget = next((cb.n_iters for cb in self.learn.cbs if isinstance(cb, IterBudget)), None)
        self.total = budget or self.n_epoch * len(self.dls.train)
        self.start_iter, self.start_time, self.meter = self.train_iter, time.time(), TermMeter()
        self.width = len(str(self.total))
        self._print(f'{self.stage}: iterations {self.start_iter} to {self.total}, a line every {self.every}')

    def before_epoch(self): pass
    def before_validate(self): pass
    def after_train(self): pass

    def after_batch(self):
        if not self.training or not self.fitting or not self.on:
            return
        self.meter.add(batch_terms(self.learn))
        if self.train_iter % self.every == 0 or self.train_iter == self.total:
            self._line()

    def _line(self) -> None:
        terms = self.meter.pop()
        loss = terms.pop('train_loss', None)
        done = self.train_iter - self.start_iter
        rate = done / max(time.time() - self.start_time, 1e-9)
        left = (self.total - self.train_iter) / rate if rate > 0 else 0
        parts = [f'iter {self.train_iter:>{self.width}}/{self.total}']
        parts += [f'{k} {_num(v)}' for k, v in terms.items()] or [f'loss {_num(loss)}']
        lr = learning_rates(self.learn).get('lr')
        if lr is not None:
            parts.append(f'lr {lr:.2e}')
        parts += [f'{rate:.2f} it/s', f'left {hms(left)}']
        self._print('  '.join(parts))

    def after_validate(self):
        if not self.fitting or not self.on:
            return
        values = validation_values(self.learn)
        if values is None:
            return
        parts = [f'iter {self.train_iter:>{self.width}}/{self.total}', 'valid']
        parts += [f'{k.removeprefix("valid_")} {_num(v)}' for k, v in values.items()]
        parts.append(f'elapsed {hms(time.time() - self.start_time)}')
        self._print('  '.join(parts))

    def after_fit(self):
        self.fitting = False
        if hasattr(self, 'old_logger'):
            self.learn.logger = self.old_logger
