"""What a run shows while it trains and what it leaves behind to compare: the history of its loss terms,
learning rates and validation metrics by iteration (`history.csv`, continued exactly after a resume),
`curves.png` drawn from it, TensorBoard and Weights & Biases scalars and image grids (`--log`), one plain
line every N iterations when the output is a file instead of redrawn progress bars, and the run's state
(`status.json`: running, finished, failed or stopped) that `dada-fastai runs` reads."""
from __future__ import annotations

import csv
import importlib
import io
import json
import math
import os
import random
import signal
import socket
import sys
import time
import uuid
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from fastai.callback.core import Callback
from fastai.callback.progress import ProgressCallback
from fastai.torch_core import rank_distrib
from fastcore.basics import noop

from .callbacks import IterBudget, TrainTerm, finding_lr

__all__ = ['HISTORY_FILE', 'CURVES_FILE', 'STATUS_FILE', 'LOGGERS', 'nice_interval', 'default_intervals',
           'read_history', 'TermMeter', 'HistoryLogger', 'TensorBoardSink', 'WandbSink', 'LineProgress',
           'progress_mode', 'draw_curves', 'prediction_grid', 'check_loggers', 'add_run_logging',
           'tracked_run', 'read_status', 'close_loggers']

HISTORY_FILE, CURVES_FILE, STATUS_FILE = 'history.csv', 'curves.png', 'status.json'
LOGGERS = {'tensorboard': 'tensorboard', 'wandb': 'wandb'}  # --log value: the extra that installs it


# ---------------------------------------------------------------------------------------------------------
# Intervals
# ---------------------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------------------
# The history file
# ---------------------------------------------------------------------------------------------------------
def read_history(path: str | Path) -> tuple[list[str] | None, list[dict[str, str]], int, str | None]:
    """(header, rows, damaged rows, problem) of a history CSV, read leniently: a row cut short by a crash,
    a line of garbage or NUL bytes is counted in `damaged` and left out. `problem` is 'missing' for no file,
    a description when the header cannot be read (nothing is usable then), else None."""
    path = Path(path)
    if not path.is_file():
        return None, [], 0, 'missing'
    try:
        text = path.read_bytes().decode('utf-8', errors='replace').replace('\0', '')
    except OSError as e:
        return None, [], 0, f'unreadable ({e.strerror or e})'
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        return None, [], 0, 'empty file'
    header = next(csv.reader([lines[0]]))
    if not header or header[0] != 'iter' or len(set(header)) != len(header):
        return None, [], 0, 'no header'
    rows, damaged, seen = [], 0, set()
    for line in lines[1:]:
        try:
            values = next(csv.reader([line]))
        except (csv.Error, StopIteration):
            damaged += 1
            continue
        if len(values) != len(header) or not _is_row(values):
            damaged += 1
            continue
        row = dict(zip(header, values))
        key = (int(row['iter']), _is_valid_row(row))
        if key not in seen:  # keep the first of duplicated rows
            seen.add(key)
            rows.append(row)
    return header, rows, damaged, None


def _is_row(values: list[str]) -> bool:
    try:
        if int(values[0]) < 0:
            return False
        for v in values[1:]:
            if v:
                float(v)
    except ValueError:
        return False
    return True


def _is_valid_row(row: dict[str, str]) -> bool:
    """Whether a history row holds a validation: its training columns (loss, learning rate) are empty."""
    return not row.get('train_loss') and not row.get('lr')


def _fmt(v) -> str:
    if v is None:
        return ''
    v = float(v)
    if math.isnan(v):
        return 'nan'
    return f'{v:.6g}'


def _write_rows(path: Path, header: list[str], rows: list[dict], append: bool) -> None:
    """Write (or append) rows and flush them to the OS: a crash loses nothing that was written."""
    new = not append or not path.is_file() or path.stat().st_size == 0
    if new and append:
        append = False
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator='\n')
    if not append:
        w.writerow(header)
    for r in rows:
        w.writerow([r.get(k, '') for k in header])
    if append:
        with open(path, 'a', encoding='utf-8') as f:
            f.write(buf.getvalue())
            f.flush()
    else:
        from .checkpoint import atomic_write_bytes
        atomic_write_bytes(path, buf.getvalue().encode())


class TermMeter:
    """Loss terms averaged over the iterations since the last read, accumulated on the device (no
    synchronisation per iteration); non-finite values (an iteration skipped with `--on-nan skip`) are left
    out of the mean, and a term that had none finite reads NaN."""

    def __init__(self):
        self.sums, self.counts, self.n = {}, {}, 0

    def add(self, terms: dict[str, torch.Tensor]) -> None:
        for k, v in terms.items():
            v = v.detach().float().reshape(())
            ok = torch.isfinite(v)
            self.sums[k] = self.sums.get(k, 0.) + torch.where(ok, v, torch.zeros_like(v))
            self.counts[k] = self.counts.get(k, 0.) + ok.float()
        self.n += 1

    def pop(self) -> dict[str, float]:
        """The means since the last call (one transfer from the device), and a fresh start."""
        names = list(self.sums)
        out = {}
        if names:
            both = torch.stack([torch.stack([self.sums[k], self.counts[k]]) for k in names]).cpu().tolist()
            out = {k: (s / c if c else float('nan')) for k, (s, c) in zip(names, both)}
        self.sums, self.counts, self.n = {}, {}, 0
        return out


def _batch_terms(learn) -> dict[str, torch.Tensor]:
    """This iteration's loss terms (seg, depth, adv, d_src, d_trg, ...) and fastai's source loss."""
    terms = dict(getattr(getattr(learn, 'dada', None), 'batch_terms', {}) or {})
    loss = getattr(learn, 'loss', None)
    if isinstance(loss, torch.Tensor):
        terms['train_loss'] = loss
    return terms


def _lrs(learn) -> dict[str, float]:
    out = {}
    opt = getattr(learn, 'opt', None)
    if opt is not None:
        hypers = opt.hypers
        out['lr'] = float(hypers[0]['lr'])
        if len(hypers) > 1:
            out['lr_head'] = float(hypers[1]['lr'])
    d_opt = getattr(getattr(learn, 'dada', None), 'd_opt', None)
    if d_opt is not None:
        out['lr_d'] = float(d_opt.hypers[0]['lr'])
    return out


def _valid_values(learn) -> dict[str, float | None] | None:
    """The last validation's loss and metrics (mIoU, mIoU*, ...); None when it was cancelled."""
    rec = getattr(learn, 'recorder', None)
    if rec is None or getattr(rec, 'cancel_valid', False):
        return None
    out = {'valid_loss': _maybe_float(rec.loss.value) if rec.loss.count else None}
    for m in learn.metrics:
        if not isinstance(m, TrainTerm):
            out[m.name] = _maybe_float(m.value)
    return out


def _maybe_float(v):
    if v is None:
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


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
    rebuilt from its readable rows, with a warning. `curves.png` is redrawn after each validation. `sinks`
    (TensorBoard, W&B) receive the same rows, and every `image_every` iterations a grid of target image /
    prediction / predicted depth. Only the main process writes."""
    order = -11  # before TrainEvalCallback (-10): see the events below

    def __init__(self, run_dir: str | Path, every: int = 1, sinks=(), image_every: int | None = None,
                 n_images: int = 4):
        self.run_dir, self.every, self.sinks = Path(run_dir), max(int(every), 1), list(sinks)
        self.image_every, self.n_images = image_every, n_images
        self.prepared, self.images, self.warned, self.fitting, self.iter_at_fit = False, None, set(), False, 0
        self.iteration = None  # the last training iteration this callback saw

    @property
    def name(self) -> str:
        return 'history'

    @property
    def path(self) -> Path:
        return self.run_dir / HISTORY_FILE

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
            kept = self.path.with_name('history.damaged.csv')
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
            _write_rows(self.path, self.columns, kept, append=False)
        valid = [int(r['iter']) for r in kept if _is_valid_row(r)]
        self.last_valid = max(valid) if valid else None
        self.time_base = max((float(r['time']) for r in kept if r.get('time')), default=0.)
        self.session_start = time.time()
        self.prepared = True

    def _elapsed(self) -> float:
        return self.time_base + time.time() - self.session_start

    def _write(self, row: dict, valid: bool = False) -> None:
        _write_rows(self.path, self.columns, [{k: (_fmt(v) if k != 'iter' else str(v)) for k, v in row.items()}],
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
            self.images = _fixed_images(self.learn, self.n_images)

    def after_batch(self):
        if not self.training or not self.fitting:
            return
        self.meter.add(_batch_terms(self.learn))
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
        row = {'iter': self.iteration, 'time': self._elapsed(), **self.meter.pop(), **_lrs(self.learn)}
        self._write(row)

    def after_validate(self):
        if not self.active:
            return
        values = _valid_values(self.learn)
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
        self._safely(draw_curves, self.path, self.run_dir / CURVES_FILE)

    def after_fit(self):
        if self.fitting:
            self._train_row()  # the iterations since the last row
            for sink in self.sinks:
                self._safely(sink.flush)
        self.fitting = False

    def close(self, exit_code: int = 0) -> None:
        """Close the loggers (at the end of the run, or when it fails)."""
        for sink in self.sinks:
            self._safely(sink.close, exit_code)


# ---------------------------------------------------------------------------------------------------------
# Image grids
# ---------------------------------------------------------------------------------------------------------
@contextmanager
def _rng_kept():
    """The random states of Python, NumPy and torch as they were (building a DataLoader draws from them;
    an exact resume needs them untouched)."""
    py, np_state, th = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(np_state)
        torch.set_rng_state(th)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def _fixed_images(learn, n: int) -> torch.Tensor | None:
    """The first `n` target validation images (the same at every grid), normalised as the model sees them."""
    try:
        with _rng_kept():
            dl = learn.dls.valid.new(shuffle=False, drop_last=False, bs=1, num_workers=0)
            xs = []
            for i, b in enumerate(dl):
                if i >= n:
                    break
                xs.append(b[0].cpu())
        if not xs or any(x.shape != xs[0].shape for x in xs):
            xs = xs[:1]
        return torch.cat(xs) if xs else None
    except Exception as e:
        warnings.warn(f'no image grids: the validation images could not be read ({type(e).__name__}: {e})')
        return None


def prediction_grid(learn, x: torch.Tensor, max_width: int = 384) -> np.ndarray:
    """(H, W, 3) uint8: one row per image of `x` (normalised target images): the image, the predicted classes
    in the protocol's colours, the predicted inverse depth (near = warm). The model predicts in eval mode,
    without gradients; every module's mode is restored afterwards (training goes on unchanged)."""
    from .data import depth_to_rgb
    from .losses import upsample
    model = getattr(learn.model, 'module', learn.model)  # never DistributedDataParallel's forward on one rank
    modes = [(m, m.training) for m in model.modules()]
    device = next(model.parameters()).device
    model.eval()
    try:
        with torch.no_grad():
            seg, depth = model(x.to(device))
    finally:
        for m, mode in modes:
            m.training = mode
    size = x.shape[-2:]
    pred = upsample(seg.float(), size).argmax(1).cpu().numpy()
    depth = upsample(depth.float(), size).cpu() if depth is not None else None
    images = _as_rgb(learn, x)
    step = max(1, math.ceil(size[1] / max_width))
    rows = []
    for i in range(len(x)):
        cols = [images[i], learn.protocol.colorize(pred[i]),
                depth_to_rgb(depth[i, 0]) if depth is not None else np.zeros_like(images[i])]
        cols = [c[::step, ::step] for c in cols]
        sep = np.full((cols[0].shape[0], 2, 3), 255, np.uint8)
        rows.append(np.concatenate([cols[0], sep, cols[1], sep, cols[2]], 1))
        rows.append(np.full((2, rows[-1].shape[1], 3), 255, np.uint8))
    return np.concatenate(rows[:-1], 0)


def _as_rgb(learn, x: torch.Tensor) -> np.ndarray:
    """(B, H, W, 3) uint8 images from normalised inputs, through the DataLoader's own decoding."""
    dec = learn.dls.valid.decode((x.cpu(),))[0]
    arr = torch.as_tensor(dec).float()
    if arr.max() <= 1.5:
        arr = arr * 255
    return arr.clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()


# ---------------------------------------------------------------------------------------------------------
# TensorBoard and Weights & Biases
# ---------------------------------------------------------------------------------------------------------
def _tag(name: str, valid: bool = False) -> str:
    """The TensorBoard / W&B name of a history column: train/seg, lr/lr_head, valid/miou, valid/loss..."""
    if valid:
        return f'valid/{name.removeprefix("valid_")}'
    return f'lr/{name}' if name.startswith('lr') else f'train/{name.removeprefix("train_")}'


class TensorBoardSink:
    """The history's rows as TensorBoard scalars (torch's `SummaryWriter`, event files in
    `RUN/tensorboard`) and the image grids. After a resume at iteration k, TensorBoard discards the steps
    after k that the previous session had written (`purge_step`)."""

    def open(self, learn, run_dir: Path, start: int) -> None:
        if getattr(self, 'writer', None) is not None:
            return
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(log_dir=str(run_dir / 'tensorboard'), purge_step=start + 1 if start else None,
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
        folder = run_dir / 'wandb'
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
            self.run = wandb.init(project=os.environ.get('WANDB_PROJECT', 'dada-fastai'), name=run_dir.name,
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


def check_loggers(log: str | None) -> list[str]:
    """The loggers that `--log` asks for ('tensorboard', 'wandb', comma-separated); a one-line error naming
    the extra to install when a package is missing."""
    names = [n.strip() for n in (log or '').split(',') if n.strip()]
    for n in names:
        if n not in LOGGERS:
            from .config import ConfigError
            raise ConfigError(f'invalid log {n!r}; valid: {", ".join(LOGGERS)} (comma-separated for both)')
        try:  # torch's writer needs the tensorboard package itself
            for module in (('tensorboard', 'torch.utils.tensorboard') if n == 'tensorboard' else ('wandb',)):
                importlib.import_module(module)
        except ImportError:
            from .runs import RunError
            raise RunError(f'--log {n} needs the {n} package: pip install "dada-fastai[{LOGGERS[n]}]" '
                           f'(from a checkout: pip install ".[{LOGGERS[n]}]")') from None
    return names


# ---------------------------------------------------------------------------------------------------------
# Plain progress lines
# ---------------------------------------------------------------------------------------------------------
def progress_mode(setting: str = 'auto', stream=None) -> str:
    """'bar' on a terminal or in a notebook, 'lines' when the output goes to a file or a pipe, for 'auto';
    else the setting itself ('bar', 'lines', 'none')."""
    if setting != 'auto':
        return setting
    from fastprogress.fastprogress import IN_NOTEBOOK
    stream = stream if stream is not None else sys.stdout
    isatty = getattr(stream, 'isatty', None)
    return 'bar' if IN_NOTEBOOK or (callable(isatty) and isatty()) else 'lines'


def _hms(seconds: float) -> str:
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
    fastai's `ProgressCallback` (`learn.progress`)."""
    order = 60

    def __init__(self, every: int = 10, file=None):
        self.every, self.file, self.fitting, self.on = max(int(every), 1), file, False, False

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
        self._print(f'training: iterations {self.start_iter} to {self.total}, a line every {self.every}')

    def before_epoch(self): pass
    def before_validate(self): pass
    def after_train(self): pass

    def after_batch(self):
        if not self.training or not self.fitting or not self.on:
            return
        self.meter.add(_batch_terms(self.learn))
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
        lr = _lrs(self.learn).get('lr')
        if lr is not None:
            parts.append(f'lr {lr:.2e}')
        parts += [f'{rate:.2f} it/s', f'left {_hms(left)}']
        self._print('  '.join(parts))

    def after_validate(self):
        if not self.fitting or not self.on:
            return
        values = _valid_values(self.learn)
        if values is None:
            return
        parts = [f'iter {self.train_iter:>{self.width}}/{self.total}', 'valid']
        parts += [f'{k.removeprefix("valid_")} {_num(v)}' for k, v in values.items()]
        parts.append(f'elapsed {_hms(time.time() - self.start_time)}')
        self._print('  '.join(parts))

    def after_fit(self):
        self.fitting = False
        if hasattr(self, 'old_logger'):
            self.learn.logger = self.old_logger


# ---------------------------------------------------------------------------------------------------------
# Curves
# ---------------------------------------------------------------------------------------------------------
def _series(rows: list[dict], col: str) -> tuple[np.ndarray, np.ndarray]:
    pts = [(int(r['iter']), float(r[col])) for r in rows if r.get(col) not in (None, '')]
    pts = [(i, v) for i, v in pts if math.isfinite(v)]
    if not pts:
        return np.zeros(0), np.zeros(0)
    a = np.asarray(pts, np.float64)
    return a[:, 0], a[:, 1]


def _smooth(y: np.ndarray) -> np.ndarray:
    w = max(1, len(y) // 40)
    if w == 1:
        return y
    kernel = np.ones(w) / w
    pad = np.concatenate([np.full(w - 1, y[0]), y])
    return np.convolve(pad, kernel, mode='valid')


def draw_curves(history: str | Path, out: str | Path, title: str | None = None) -> Path | None:
    """Draw `out` (PNG) from a history CSV: the segmentation and depth losses, the adversarial (fooling)
    loss, the discriminators' losses on source and target, the learning rates and the target validation
    mIoU (and mIoU*, and the depth's δ<1.25 where the target has depth), by iteration. Training curves are
    shown raw (faint) and smoothed. Written atomically; None when the history has no rows yet."""
    from matplotlib.figure import Figure
    from .checkpoint import atomic_write_bytes
    history, out = Path(history), Path(out)
    header, rows, _, problem = read_history(history)
    if problem or not rows:
        return None
    panels = [('segmentation loss (CE)', lambda c: c == 'seg', False),
              ('depth loss (berHu)', lambda c: c == 'depth', False),
              ('adversarial loss (fooling)', lambda c: c.startswith('adv'), False),
              ('discriminator loss', lambda c: c.startswith(('d_src', 'd_trg')), False),
              ('learning rate', lambda c: c.startswith('lr'), True),
              ('target validation (%)', lambda c: c.startswith('miou') or c == 'delta1', False)]
    fig = Figure(figsize=(13, 6.4), layout='constrained')
    axs = fig.subplots(2, 3)
    for ax, (name, pick, log) in zip(axs.flat, panels):
        ax.set_title(name, fontsize=10)
        drawn = False
        for col in [c for c in header if pick(c)]:
            x, y = _series(rows, col)
            if not len(x):
                continue
            drawn = True
            if name.startswith('target validation'):
                scale = 100 if col == 'delta1' else 1  # a share of pixels, drawn in % beside the mIoU
                ax.plot(x, y * scale, 'o-', ms=3,
                        label={'miou': 'mIoU', 'miou13': 'mIoU* (13)', 'delta1': 'depth δ<1.25'}.get(col, col))
            elif name == 'learning rate':
                ax.plot(x, y, label={'lr': 'backbone', 'lr_head': 'head', 'lr_d': 'discriminators'}.get(col, col))
            else:
                line, = ax.plot(x, y, alpha=0.25, lw=0.8)
                ax.plot(x, _smooth(y), color=line.get_color(), lw=1.4, label=col)
        if drawn:
            if log:
                ax.set_yscale('log')
            ax.legend(fontsize=8, loc='best')
            ax.grid(alpha=0.3)
        else:
            ax.text(0.5, 0.5, 'not in this run' if name.startswith(('adv', 'disc')) else 'no values yet',
                    ha='center', va='center', transform=ax.transAxes, color='grey')
        ax.tick_params(labelsize=8)
    for ax in axs[-1]:
        ax.set_xlabel('iteration', fontsize=9)
    if title is None:
        title = history.parent.name
        try:
            import yaml
            cfg = yaml.safe_load((history.parent / 'config.yaml').read_text()) or {}
            title += f"  ({cfg['method']}, {cfg['arch']}, {cfg['iters']} iterations)"
        except Exception:
            pass
    fig.suptitle(title, fontsize=11)
    buf = io.BytesIO()
    fig.savefig(buf, format='png', dpi=72)
    return atomic_write_bytes(out, buf.getvalue())


# ---------------------------------------------------------------------------------------------------------
# Putting it on a run
# ---------------------------------------------------------------------------------------------------------
def add_run_logging(learn, cfg, run_dir: str | Path | None) -> None:
    """Give `learn` what `cfg` asks for: plain progress lines instead of bars when the output is not a
    terminal (`progress`), and, with a run folder, the history, curves and `--log` loggers."""
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
            learn.add_cb(LineProgress(getattr(cfg, 'print_every', None) or auto['print_every']))
        else:
            learn.logger = noop
    if run_dir is None:
        return
    sinks = [TensorBoardSink() if n == 'tensorboard' else WandbSink() for n in loggers]
    learn.add_cb(HistoryLogger(run_dir, getattr(cfg, 'log_every', None) or auto['log_every'], sinks,
                               getattr(cfg, 'image_every', None) or auto['image_every']))


def close_loggers(learn, exit_code: int = 0) -> None:
    """Close the TensorBoard and W&B loggers of `learn`'s history (end of the run)."""
    history = getattr(learn, 'history', None)
    if isinstance(history, HistoryLogger):
        history.close(exit_code)


# ---------------------------------------------------------------------------------------------------------
# The run's state
# ---------------------------------------------------------------------------------------------------------
def read_status(run_dir: str | Path) -> dict | None:
    """The run's `status.json`, or None (an older run, or a damaged file)."""
    try:
        status = json.loads((Path(run_dir) / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return status if isinstance(status, dict) else None


def _write_status(run_dir: Path, status: dict) -> None:
    from .checkpoint import atomic_write_bytes
    status['updated'] = round(time.time(), 1)
    atomic_write_bytes(run_dir / STATUS_FILE, json.dumps(status, indent=1).encode())


def _one_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and not ln.startswith('Exception occured in')]
    return f'{type(e).__name__}: {lines[0]}' if lines else type(e).__name__


def _stop_on_sigterm():
    """Make SIGTERM (a batch scheduler's stop, `kill`) interrupt training as Ctrl-C does, so that the run is
    recorded as stopped and its loggers closed; returns the handler to restore, None when another one was set
    (or outside the main thread)."""
    import threading
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        return None

    def _interrupt(signum, frame):
        raise KeyboardInterrupt('SIGTERM')

    signal.signal(signal.SIGTERM, _interrupt)
    return signal.SIG_DFL


def _iteration(learn) -> int:
    """The run's last training iteration (`train_iter` is reset by fastai's `validate`)."""
    it = getattr(getattr(learn, 'history', None), 'iteration', None)
    return int(it if it is not None else getattr(learn, 'train_iter', 0) or 0)


@contextmanager
def tracked_run(run_dir: str | Path, learn, iters: int):
    """Record in `status.json` that the run in `run_dir` is running (process id, host), then how it ended:
    'finished', 'failed' (with the error's line) or 'stopped' (interrupted); the seconds spent across
    sessions; and close the loggers. Main process only; the other processes just run the block."""
    from .distributed import is_main_process
    run_dir = Path(run_dir)
    if not is_main_process():
        yield
        return
    prev = read_status(run_dir) or {}
    now = time.time()
    status = {'state': 'running', 'iter': int(getattr(learn, 'train_iter', 0) or 0), 'iters': int(iters),
              'started': prev.get('started', round(now, 1)), 'elapsed': float(prev.get('elapsed', 0.)),
              'sessions': int(prev.get('sessions', 0)) + 1, 'pid': os.getpid(), 'host': socket.gethostname()}
    base = status['elapsed']
    _write_status(run_dir, status)
    previous = _stop_on_sigterm()
    try:
        yield
    except BaseException as e:
        stopped = isinstance(e, (KeyboardInterrupt, SystemExit))
        status.update(state='stopped' if stopped else 'failed', iter=_iteration(learn),
                      elapsed=round(base + time.time() - now, 1))
        if not stopped:
            status['error'] = _one_line(e)
        _write_status(run_dir, status)
        close_loggers(learn, exit_code=1)
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    status.update(state='finished', iter=_iteration(learn), elapsed=round(base + time.time() - now, 1))
    status.pop('error', None)
    _write_status(run_dir, status)
    close_loggers(learn)
