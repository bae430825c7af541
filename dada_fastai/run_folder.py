"""A run folder and its files: the one place that knows their names, reads them and writes them. Every other module
asks a `RunFolder` for a path or a file's content instead of spelling `'config.yaml'`.

    config.yaml          the run's resolved configuration (`TrainConfig.to_dict()`)
    status.json          running, finished, failed or stopped; iterations; seconds across sessions
    history.csv          loss terms, learning rates and validations by iteration (`history.HistoryLogger`)
    curves.png           drawn from history.csv
    last.pth, prev.pth   the last training checkpoint and the one before it (`checkpoint`)
    export.safetensors   the trained segmenter for inference
    export.onnx          the segmenter for runtimes outside PyTorch (`dada-fastai export RUN --format onnx`)
    results.json         the final evaluation; results.png its pictures
    tensorboard/, wandb/ the optional loggers' files

Writes are atomic (`storage.atomic_write_bytes`); a full disk is one line (`errors.DiskFullError`)."""
from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path

import yaml

from .errors import ConfigError, RunError
from .storage import append_bytes, atomic_write_bytes

__all__ = ['CONFIG_FILE', 'STATUS_FILE', 'HISTORY_FILE', 'DAMAGED_HISTORY_FILE', 'CURVES_FILE', 'LAST_CHECKPOINT',
           'PREV_CHECKPOINT', 'EXPORT_FILE', 'ONNX_FILE', 'RESULTS_FILE', 'PICTURE_FILE', 'RUN_FILES', 'read_mapping',
           'read_history', 'is_validation_row', 'write_history_rows', 'RunFolder']

CONFIG_FILE, STATUS_FILE, RESULTS_FILE, PICTURE_FILE = 'config.yaml', 'status.json', 'results.json', 'results.png'
HISTORY_FILE, DAMAGED_HISTORY_FILE, CURVES_FILE = 'history.csv', 'history.damaged.csv', 'curves.png'
LAST_CHECKPOINT, PREV_CHECKPOINT, EXPORT_FILE = 'last.pth', 'prev.pth', 'export.safetensors'
ONNX_FILE = 'export.onnx'
RUN_FILES = (CONFIG_FILE, LAST_CHECKPOINT, EXPORT_FILE)  # any of them: the folder holds a run


def read_mapping(path: str | Path) -> dict:
    """A YAML file that holds a mapping (a run's config.yaml, a preset), or `ConfigError` naming the file and, for
    bad YAML, the line."""
    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f'cannot read {path} ({type(e).__name__}): not a YAML text file') from None
    except yaml.YAMLError as e:
        where = getattr(e, 'problem_mark', None)
        at = f' at line {where.line + 1}' if where is not None else ''
        raise ConfigError(f'bad YAML in {path}{at}: {getattr(e, "problem", None) or e}') from None
    if not isinstance(values, dict):
        raise ConfigError(f'{path} must hold a mapping of option: value, not {type(values).__name__}')
    return values


# ---------------------------------------------------------------------------------------------------------
# history.csv
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
        key = (int(row['iter']), is_validation_row(row))
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


def is_validation_row(row: dict[str, str]) -> bool:
    """Whether a history row holds a validation: its training columns (loss, learning rate) are empty."""
    return not row.get('train_loss') and not row.get('lr')


def write_history_rows(path: str | Path, header: list[str], rows: list[dict], append: bool) -> None:
    """Write (or append) rows of strings to a history CSV and flush them to the system: a crash loses nothing that
    was written, a full disk raises `DiskFullError` and leaves the rows before intact."""
    path = Path(path)
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
        append_bytes(path, buf.getvalue().encode())
    else:
        atomic_write_bytes(path, buf.getvalue().encode())


def _json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class RunFolder:
    """The folder of one training run and the paths of its files (`folder.config`, `folder.last`, ...)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f'RunFolder({str(self.path)!r})'

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    # -- the files ------------------------------------------------------------------------------------------
    config = property(lambda self: self.path / CONFIG_FILE, doc='config.yaml')
    status = property(lambda self: self.path / STATUS_FILE, doc='status.json')
    history = property(lambda self: self.path / HISTORY_FILE, doc='history.csv')
    damaged_history = property(lambda self: self.path / DAMAGED_HISTORY_FILE, doc='a history.csv set aside')
    curves = property(lambda self: self.path / CURVES_FILE, doc='curves.png')
    last = property(lambda self: self.path / LAST_CHECKPOINT, doc='last.pth')
    prev = property(lambda self: self.path / PREV_CHECKPOINT, doc='prev.pth')
    export = property(lambda self: self.path / EXPORT_FILE, doc='export.safetensors')
    onnx = property(lambda self: self.path / ONNX_FILE, doc='export.onnx')
    results = property(lambda self: self.path / RESULTS_FILE, doc='results.json')
    picture = property(lambda self: self.path / PICTURE_FILE, doc='results.png')
    tensorboard = property(lambda self: self.path / 'tensorboard', doc="TensorBoard's event files")
    wandb = property(lambda self: self.path / 'wandb', doc="Weights & Biases' files")

    def holds_run(self) -> bool:
        """Whether a run was started here (its configuration, a checkpoint or an export is there)."""
        return any((self.path / name).exists() for name in RUN_FILES)

    def model_file(self) -> Path | None:
        """The file a trained model loads from: the export, else the last checkpoint; None when neither is here."""
        return next((p for p in (self.export, self.last) if p.is_file()), None)

    # -- config.yaml -----------------------------------------------------------------------------------------
    def read_config(self) -> dict | None:
        """The run's configuration, or None when the folder holds none that `dada-fastai train` wrote (missing,
        unreadable, or without a method and an iteration count)."""
        try:
            cfg = read_mapping(self.config)
        except ConfigError:
            return None
        return cfg if 'method' in cfg and 'iters' in cfg else None

    def load_config(self) -> dict:
        """The run's configuration as a mapping: `RunError` when the folder has none, `ConfigError` when it cannot
        be read."""
        if not self.config.is_file():
            raise RunError(f'{self.path} is not a run folder (no {CONFIG_FILE}); give the folder that `train --out` '
                           'made')
        try:
            return read_mapping(self.config)
        except ConfigError as e:
            raise ConfigError(f'{e}; restore it from the checkpoint\'s copy or start a new run') from None

    def write_config(self, values: dict) -> Path:
        """Write the run's configuration (atomically)."""
        return atomic_write_bytes(self.config, yaml.safe_dump(values, sort_keys=False).encode())

    def read_history(self) -> tuple[list[str] | None, list[dict[str, str]], int, str | None]:
        """`read_history` of the run's history.csv."""
        return read_history(self.history)

    # -- status.json and results.json ------------------------------------------------------------------------
    def read_status(self) -> dict | None:
        """The run's state (`status.json`), or None (an older run, or a damaged file)."""
        return _json(self.status)

    def write_status(self, status: dict) -> Path:
        """Record the run's state, stamped with the time of the write (`updated`)."""
        status['updated'] = round(time.time(), 1)
        return atomic_write_bytes(self.status, json.dumps(status, indent=1).encode())

    def read_results(self) -> dict | None:
        """The final evaluation (`results.json`), or None."""
        return _json(self.results)

    def write_results(self, results: dict) -> Path:
        """Write the final evaluation (atomically)."""
        return atomic_write_bytes(self.results, json.dumps(results, indent=1).encode())
