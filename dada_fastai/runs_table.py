"""Runs side by side: what `dada-fastai runs` reads from run folders (config.yaml, status.json, history.csv,
results.json) and the rich table it prints."""
from __future__ import annotations

import math
import os
import socket
import time
from pathlib import Path

from .errors import RunError
from .run_folder import RunFolder, is_validation_row

__all__ = ['SORT_KEYS', 'is_run_dir', 'find_run_dirs', 'run_summary', 'collect_runs', 'sort_runs', 'runs_table',
           'print_runs']

SORT_KEYS = ('run', 'method', 'arch', 'iters', 'miou', 'miou13', 'date', 'duration', 'status')
_NUMERIC = {'iters', 'miou', 'miou13', 'duration'}  # sorted largest first
_MAX_DEPTH = 3  # how deep `find_run_dirs` looks for run folders under a folder that is not one


def is_run_dir(path: str | Path) -> bool:
    """Whether `path` is a run folder (`train` wrote its config.yaml there)."""
    return RunFolder(path).read_config() is not None


def find_run_dirs(path: str | Path) -> list[Path]:
    """`path` itself when it is a run folder, else the run folders under it (up to three levels down, not
    inside runs); a one-line error when there are none."""
    path = Path(path)
    if not path.exists():
        raise RunError(f'{path} not found; give run folders or a folder that holds them')
    if is_run_dir(path):
        return [path]
    if not path.is_dir():
        raise RunError(f'{path} is not a run folder: a run folder holds the config.yaml that `dada-fastai train` wrote')
    found = []
    for root, dirs, _ in os.walk(path):
        depth = len(Path(root).relative_to(path).parts)
        if Path(root) != path and is_run_dir(root):
            found.append(Path(root))
            dirs[:] = []  # never inside a run (its wandb/ folder has config files too)
            continue
        dirs[:] = sorted(d for d in dirs if not d.startswith('.')) if depth < _MAX_DEPTH else []
    if not found:
        raise RunError(f'{path} is not a run folder and holds none (no config.yaml written by `dada-fastai train`)')
    return found


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (OSError, ValueError, TypeError):
        return False
    return True


def _state(status: dict | None, results: dict | None) -> tuple[str, str | None]:
    """('finished' | 'running' | 'failed' | 'stopped' | 'incomplete', error line or None)."""
    if status is None:  # a run from before status.json
        return ('finished', None) if results else ('incomplete', None)
    state = status.get('state', 'incomplete')
    if state == 'running' and status.get('host') == socket.gethostname() and not _alive(status.get('pid')):
        return 'stopped', 'its process is gone (killed?)'
    return state, status.get('error')


def run_summary(path: str | Path) -> dict:
    """One run as plain values: run, path, method, arch, iters_done, iters, miou, miou13 (%; the final
    evaluation, or the last validation of a run that did not finish, at `miou_iter`), per_class, date
    (start, ISO), started (epoch seconds), duration (seconds across sessions), status, error."""
    path = Path(path)
    folder = RunFolder(path)
    cfg = folder.read_config() or {}
    status = folder.read_status()
    results = folder.read_results()
    _, rows, _, _ = folder.read_history()
    state, error = _state(status, results)
    last = max((int(r['iter']) for r in rows), default=None)
    done = max([int(v) for v in (last, (status or {}).get('iter'), (results or {}).get('iters')) if v is not None],
               default=0)
    asked = (status or {}).get('iters', cfg.get('iters'))
    miou = miou13 = miou_iter = None
    per_class = {}
    if state == 'finished' and results:
        miou, miou13, miou_iter = results.get('miou'), results.get('miou13'), results.get('iters')
        per_class = results.get('per_class') or {}
    else:
        valid = [r for r in rows if is_validation_row(r) and r.get('miou')]
        if valid:
            r = valid[-1]
            miou, miou_iter = float(r['miou']), int(r['iter'])
            miou13 = float(r['miou13']) if r.get('miou13') else None
    started = (status or {}).get('started')
    if started is None:
        try:
            started = folder.config.stat().st_mtime
        except OSError:
            started = None
    duration = (status or {}).get('elapsed')
    if state == 'running' and status is not None:
        duration = float(status.get('elapsed', 0.)) + max(time.time() - float(status.get('updated', time.time())), 0.)
    if state != 'running':  # a process killed outside Python's reach left its status at the start
        duration = max([float(v) for v in (duration, *(r.get('time') for r in rows[-1:])) if v not in (None, '')],
                       default=None)
    if duration is None and results:
        duration = results.get('seconds')
    return {'run': path.name, 'path': str(path), 'method': cfg.get('method'), 'arch': cfg.get('arch'),
            'iters_done': done, 'iters': asked, 'miou': _num(miou),
            'miou13': _num(miou13), 'miou_iter': miou_iter, 'per_class': {k: _num(v) for k, v in per_class.items()},
            'date': time.strftime('%Y-%m-%d %H:%M', time.localtime(started)) if started else None,
            'started': started, 'duration': round(duration, 1) if duration is not None else None,
            'status': state, 'error': error}


def _num(v):
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def sort_runs(found: list[dict], key: str = 'date', reverse: bool = False) -> list[dict]:
    """Runs sorted by a column of the table: numbers largest first, text and dates in increasing order;
    `reverse` flips that. Runs without a value come last."""
    if key not in SORT_KEYS:
        raise ValueError(f'unknown sort column {key!r}; valid: {", ".join(SORT_KEYS)}')
    field = {'date': 'started', 'iters': 'iters_done'}.get(key, key)
    have = [r for r in found if r.get(field) is not None]
    missing = [r for r in found if r.get(field) is None]
    descending = (key in _NUMERIC) != reverse
    return sorted(have, key=lambda r: r[field], reverse=descending) + missing


def collect_runs(paths: list[str | Path], sort: str = 'date', reverse: bool = False) -> list[dict]:
    """The summaries of the runs in `paths` (run folders or folders that hold them), sorted; `run` names a
    run by its path under the folder given (ablation/s1), or by its own name when given itself."""
    found, seen = [], set()
    for p in paths:
        for d in find_run_dirs(p):
            if d.resolve() not in seen:
                seen.add(d.resolve())
                summary = run_summary(d)
                if d != Path(p):
                    summary['run'] = d.relative_to(p).as_posix()
                found.append(summary)
    return sort_runs(found, sort, reverse)


def _hms(seconds) -> str:
    if seconds is None:
        return '-'
    s = int(seconds)
    return f'{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}'


def _pct(v) -> str:
    return '-' if v is None else f'{v:.1f}'


_STYLE = {'finished': 'green', 'running': 'cyan', 'failed': 'red', 'stopped': 'yellow', 'incomplete': 'yellow'}


def runs_table(found: list[dict], per_class: bool = False, title: str | None = None):
    """A rich Table of run summaries; `per_class` adds a column per class (IoU %)."""
    from rich.table import Table
    table = Table(title=title)
    for name, justify in (('run', 'left'), ('method', 'left'), ('arch', 'left'), ('iters', 'right'),
                          ('mIoU', 'right'), ('mIoU*', 'right')):
        table.add_column(name, justify=justify)
    classes = []
    if per_class:
        for r in found:
            classes += [c for c in r['per_class'] if c not in classes]
        for c in classes:
            table.add_column(c, justify='right')
    for name in ('date', 'duration', 'status'):
        table.add_column(name, justify='right' if name == 'duration' else 'left')
    for r in found:
        done = r['iters_done']
        iters = f'{done if done is not None else "-"}/{r["iters"] if r["iters"] is not None else "-"}'
        unfinished = r['status'] != 'finished' and r['miou'] is not None
        miou = _pct(r['miou']) + (f' @{r["miou_iter"]}' if unfinished and r['miou_iter'] is not None else '')
        state = r['status']
        if r.get('error'):
            state += f': {r["error"][:60]}'
        row = [r['run'], str(r['method'] or '-'), str(r['arch'] or '-'), iters, miou, _pct(r['miou13'])]
        row += [_pct(r['per_class'].get(c)) for c in classes]
        row += [r['date'] or '-', _hms(r['duration']), f'[{_STYLE.get(r["status"], "white")}]{state}']
        table.add_row(*row)
    return table


def print_runs(found: list[dict], console=None, per_class: bool = False) -> None:
    """Print the table of `found` runs (mIoU of a run that did not finish: its last validation, @iteration)."""
    from rich.console import Console
    console = console or Console()
    table = runs_table(found, per_class=per_class, title=f'{len(found)} run{"s" if len(found) != 1 else ""}')
    if not console.is_terminal:  # a file or a pipe: the table at its natural width, not squeezed into 80 columns
        width = console.measure(table, options=console.options.update_width(1000)).maximum
        console = Console(file=console.file, width=max(width, 40), color_system=None)
    console.print(table)
