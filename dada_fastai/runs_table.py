"""Runs side by side: what `dada-fastai runs` reads from run folders (config.yaml, status.json, history.csv,
results.json) and the rich table it prints; with `--group`, the runs that differ only in their seed in one row, with the
mean, the standard deviation and the number of seeds."""
from __future__ import annotations

import json
import math
import os
import socket
import statistics
import time
from pathlib import Path

from .errors import RunError
from .run_folder import RunFolder, is_validation_row

__all__ = ['SORT_KEYS', 'is_run_dir', 'find_run_dirs', 'run_summary', 'collect_runs', 'sort_runs', 'runs_table',
           'print_runs', 'NOT_SETTINGS', 'settings_key', 'group_runs', 'groups_table', 'print_groups']

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
    """One run as plain values: run, path, method, arch, seed, iters_done, iters, miou, miou13 (%; the final
    evaluation, or the last validation of a run that did not finish, at `miou_iter`), delta1 (the depth's δ<1.25, where
    the run measures it), per_class, date (start, ISO), started (epoch seconds), duration (seconds across sessions),
    status, error."""
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
    miou = miou13 = miou_iter = delta1 = None
    per_class = {}
    if state == 'finished' and results:
        miou, miou13, miou_iter = results.get('miou'), results.get('miou13'), results.get('iters')
        per_class = results.get('per_class') or {}
        depth = results.get('depth')
        delta1 = depth.get('delta1') if isinstance(depth, dict) else None
    else:
        valid = [r for r in rows if is_validation_row(r) and r.get('miou')]
        if valid:
            r = valid[-1]
            miou, miou_iter = float(r['miou']), int(r['iter'])
            miou13 = float(r['miou13']) if r.get('miou13') else None
            delta1 = float(r['delta1']) if r.get('delta1') else None
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
            'seed': cfg.get('seed'), 'iters_done': done, 'iters': asked, 'miou': _num(miou),
            'miou13': _num(miou13), 'miou_iter': miou_iter, 'delta1': _num(delta1),
            'per_class': {k: _num(v) for k, v in per_class.items()},
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
    _print(runs_table(found, per_class=per_class, title=f'{len(found)} run{"s" if len(found) != 1 else ""}'), console)


def _print(table, console=None) -> None:
    """Print a rich table; to a file or a pipe at its natural width, not squeezed into 80 columns."""
    from rich.console import Console
    console = console or Console()
    if not console.is_terminal:
        width = console.measure(table, options=console.options.update_width(1000)).maximum
        console = Console(file=console.file, width=max(width, 40), color_system=None)
    console.print(table)


# ---------------------------------------------------------------------------------------------------------
# Seeds side by side
# ---------------------------------------------------------------------------------------------------------
NOT_SETTINGS = ('seed', 'out', 'device', 'workers')  # what runs of one setting may differ in (and how they are watched)


def settings_key(config: dict) -> dict:
    """A run's configuration without what its seeds may differ in: the seed, the run folder, the device, the loader
    workers and the options that only watch a run (those `--resume` may change, except the iterations)."""
    from .config import train_options
    free = set(NOT_SETTINGS) | {n for n, (_, opt) in train_options().items() if opt.on_resume and n != 'iters'}
    return {k: v for k, v in config.items() if k not in free}


def _stats(values: list) -> dict:
    """{'mean', 'std' (sample, ddof 1; None for fewer than two), 'n', 'values'} of the values that are not None."""
    vals = [v for v in values if v is not None]
    return {'mean': statistics.fmean(vals) if vals else None,
            'std': statistics.stdev(vals) if len(vals) > 1 else None, 'n': len(vals), 'values': vals}


def group_runs(found: list[dict], sort: str = 'date', reverse: bool = False) -> list[dict]:
    """Runs (`collect_runs`) that differ only in their seed (`settings_key`), one group each: method, arch, iters,
    n (runs), seeds and runs (names; in the order of the seeds), unfinished (names of runs not finished, counted with
    their last validation), miou, miou13 and delta1 as `{'mean', 'std', 'n', 'values'}`, settings (the shared
    configuration) and differs (the settings, other than the method, arch and iters, in which the groups differ).
    Sorted by `sort` (mIoU and mIoU*: the mean, largest first), else in the order of `found`."""
    groups: dict[str, list[dict]] = {}
    settings: dict[str, dict] = {}
    for r in found:
        key_values = settings_key(RunFolder(r['path']).read_config() or {})
        key = json.dumps(key_values, sort_keys=True, default=str)
        groups.setdefault(key, []).append(r)
        settings[key] = key_values
    varying = sorted({k for s in settings.values() for k in s if k not in ('method', 'arch', 'iters')  # columns
                      and len({json.dumps(t.get(k), sort_keys=True, default=str) for t in settings.values()}) > 1})
    out = []
    for key, members in groups.items():
        members = sorted(members, key=lambda r: (r['seed'] is None, r['seed'] or 0, r['run']))
        first = members[0]
        out.append({'method': first['method'], 'arch': first['arch'], 'iters': first['iters'], 'n': len(members),
                    'seeds': [r['seed'] for r in members], 'runs': [r['run'] for r in members],
                    'unfinished': [r['run'] for r in members if r['status'] != 'finished'],
                    **{m: _stats([r[m] for r in members]) for m in ('miou', 'miou13', 'delta1')},
                    'settings': settings[key], 'differs': {k: settings[key].get(k) for k in varying}})
    if sort not in ('miou', 'miou13', 'iters', 'method', 'arch'):  # a run's column: the groups in the runs' order
        return out
    value = (lambda g: g[sort]['mean']) if sort in ('miou', 'miou13') else (lambda g: g[sort])  # noqa: E731
    have, missing = [g for g in out if value(g) is not None], [g for g in out if value(g) is None]
    return sorted(have, key=value, reverse=(sort in _NUMERIC) != reverse) + missing


def _mean_std(stats: dict, digits: int = 1) -> str:
    if stats['mean'] is None:
        return '-'
    std = f' ± {stats["std"]:.{digits}f}' if stats['std'] is not None else ''
    return f'{stats["mean"]:.{digits}f}{std}'


def _group_name(names: list[str]) -> str:
    """The runs of a group in one cell: their common prefix and a star ('toy/dada-*'), or their names."""
    prefix = os.path.commonprefix(names)
    if len(names) > 1 and prefix:
        return prefix + '*'
    return ', '.join(names)


def groups_table(groups: list[dict], title: str | None = None):
    """A rich Table of run groups: runs, method, arch, iterations, seeds, mIoU, mIoU* and depth δ<1.25 as mean ±
    standard deviation, and the settings in which the groups differ."""
    from rich.table import Table
    table = Table(title=title)
    differs = any(g['differs'] for g in groups)
    for name, justify in (('runs', 'left'), ('method', 'left'), ('arch', 'left'), ('iters', 'right'),
                          ('seeds', 'right'), ('mIoU', 'right'), ('mIoU*', 'right'), ('δ<1.25', 'right')):
        table.add_column(name, justify=justify)
    if differs:
        table.add_column('settings', justify='left')
    for g in groups:
        seeds = str(g['n']) + (f' ({len(g["unfinished"])} unfinished)' if g['unfinished'] else '')
        row = [_group_name(g['runs']), str(g['method'] or '-'), str(g['arch'] or '-'),
               str(g['iters'] if g['iters'] is not None else '-'), seeds, _mean_std(g['miou']), _mean_std(g['miou13']),
               _mean_std(g['delta1'], 3)]
        if differs:
            row.append(' '.join(f'{k}={v}' for k, v in g['differs'].items()))
        table.add_row(*row)
    return table


def print_groups(groups: list[dict], console=None) -> None:
    """Print the table of run groups (a run that did not finish counts with its last validation, and is marked)."""
    runs = sum(g['n'] for g in groups)
    title = f'{len(groups)} group{"s" if len(groups) != 1 else ""} of {runs} run{"s" if runs != 1 else ""}'
    _print(groups_table(groups, title=title), console)
