"""Progress bars and the epoch table: values that fit their columns, and fewer reads from the device."""
from __future__ import annotations

from fastai.callback.progress import ProgressCallback

__all__ = ['fit_number', 'TableProgress', 'ThrottledProgress']


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
