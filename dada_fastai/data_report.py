"""A data report: items per split, class pixels, ignored and unmapped ids, the source's depth range, and every damaged
file (all files are read, as training reads them).

Counts are taken on the files as stored (full resolution), before any resizing.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from .datasets import DatasetError, DomainDataset, Sample, open_dataset

__all__ = ['data_report', 'print_report']

_N_IDS = 65536  # raw label ids are 8- or 16-bit


def _read_sample(ds: DomainDataset, s: Sample, label: bool, depth: bool) -> tuple:
    """(raw-id counts or None, (min, max, missing, total) of the inverse depth or None, problems): every file of one
    sample read as training reads it; a damaged file is a problem (its one-line message), not an exception."""
    problems, counts, span = [], None, None
    for what in ('image', 'label', 'depth'):
        if (what == 'label' and not label) or (what == 'depth' and not (depth and s.depth is not None)):
            continue
        try:
            if what == 'image':
                ds.read_image(s)
            elif what == 'label':
                counts = np.bincount(ds.read_raw_label(s).ravel(), minlength=_N_IDS)
            else:
                z = ds.read_depth(s)
                finite = z[np.isfinite(z)]
                span = (float(finite.min()) if finite.size else np.inf, float(finite.max()) if finite.size else -np.inf,
                        z.size - finite.size, z.size)
        except DatasetError as e:
            if str(e) not in problems:  # a damaged image also fails its label's size check
                problems.append(str(e))
    return counts, span, problems


def _split_stats(ds: DomainDataset, samples: list[Sample], name: str, label: bool, depth: bool,
                 damaged: list[str]) -> dict[str, Any]:
    """Read every file of a split (in threads: decoding releases the GIL), adding each damaged file's one line to
    `damaged` instead of stopping at the first. With `label`: pixels per class, ignored pixels, the raw ids without a
    class (mapped to 255: void and classes the protocol leaves out) and, among them, the ids the dataset's format
    does not define at all (a sign of a wrong layout or mapping). With `depth`: the range of the finite inverse-depth
    targets and the fraction of pixels without depth."""
    counts = np.zeros(_N_IDS, np.int64)
    low, high, missing, total = np.inf, -np.inf, 0, 0
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for c, span, problems in pool.map(lambda s: _read_sample(ds, s, label, depth), samples):
            damaged += [f'{name}: {p}' for p in problems]
            if c is not None:
                counts += c
            if span is not None:
                low, high, missing, total = min(low, span[0]), max(high, span[1]), missing + span[2], total + span[3]
    stats: dict[str, Any] = {}
    if label:
        ignored = ds.lut == 255
        undefined = np.ones(_N_IDS, bool)
        undefined[list(ds.defined_ids)] = False
        stats.update({'class_pixels': {n: int(counts[ds.lut == i].sum()) for i, n in enumerate(ds.protocol.classes)},
                      'ignored_pixels': int(counts[ignored].sum()),
                      'unmapped_ids': {str(i): int(counts[i]) for i in np.flatnonzero(ignored & (counts > 0))},
                      'undefined_ids': {str(i): int(counts[i]) for i in np.flatnonzero(undefined & (counts > 0))}})
    if depth:
        stats['depth'] = {'min': low if np.isfinite(low) else None, 'max': high if np.isfinite(high) else None,
                          'missing_fraction': missing / total if total else 0.0}
    return stats


def data_report(source: str, target: str, n_classes: int = 16) -> dict[str, Any]:
    """Report on a source and a target given as 'KIND:DIR' specs, as JSON-serialisable data. Every file is read as
    training reads it; `damaged` lists the one-line message of each file that cannot be (empty when all can)."""
    src = open_dataset(source, n_classes=n_classes)
    tgt = open_dataset(target, n_classes=n_classes)
    missing = {name: [] for name in ('source train', 'target train', 'target val')}
    src_items, tgt_train, tgt_val = (ds.samples(split, missing[name]) for ds, split, name in (
        (src, 'train', 'source train'), (tgt, 'train', 'target train'), (tgt, 'val', 'target val')))
    damaged = [f'{name}: {line}' for name, lines in missing.items() for line in lines]  # images without their files
    source_stats = _split_stats(src, src_items, 'source train', True, src.has_depth, damaged)
    _split_stats(tgt, tgt_train, 'target train', False, False, damaged)
    val_stats = _split_stats(tgt, tgt_val, 'target val', True, False, damaged)
    return {
        'protocol': src.protocol.name,
        'source': {'kind': src.kind, 'root': str(src.root), 'items': len(src_items), **source_stats,
                   'depth': source_stats.get('depth')},
        'target_train': {'kind': tgt.kind, 'root': str(tgt.root), 'items': len(tgt_train)},
        'target_val': {'items': len(tgt_val), **val_stats},
        'damaged': damaged,
    }


def _percent(n: int, total: int) -> str:
    return f'{100 * n / total:.2f}%' if total else '-'


def _unmapped_line(name: str, stats: dict[str, Any], top: int = 8) -> str | None:
    """A warning naming the most frequent raw ids that the format does not define (ignored in training and
    evaluation), or None when there are none. Void and left-out classes are expected: no warning for them."""
    ids = sorted(stats['undefined_ids'].items(), key=lambda kv: -kv[1])
    if not ids:
        return None
    total = sum(stats['class_pixels'].values()) + stats['ignored_pixels']
    shown = ', '.join(f'{i} ({_percent(n, total)})' for i, n in ids[:top]) + (', ...' if len(ids) > top else '')
    return (f'[yellow]warning:[/] {name}: {len(ids)} raw label ids are not defined by this layout and are '
            f'ignored: {shown}; check the dataset kind (or id_mapping for a folder)')


def print_report(report: dict[str, Any], console: Console | None = None) -> None:
    """Print a data report as rich tables: items, class pixels (source and target val), depth, unmapped ids."""
    console = console or Console()
    src, train, val = report['source'], report['target_train'], report['target_val']
    items = Table(title=f'Items ({report["protocol"]}-class protocol)')
    for col in ('split', 'kind', 'root', 'items'):
        items.add_column(col, justify='right' if col == 'items' else 'left')
    items.add_row('source train', src['kind'], src['root'], str(src['items']))
    items.add_row('target train', train.get('kind', ''), train.get('root', ''), str(train['items']))
    items.add_row('target val', train.get('kind', ''), train.get('root', ''), str(val['items']))
    console.print(items)

    pixels = Table(title='Pixels per class (files as stored)')
    for col in ('class', 'source', 'source %', 'target val', 'target val %'):
        pixels.add_column(col, justify='left' if col == 'class' else 'right')
    totals = [sum(d['class_pixels'].values()) + d['ignored_pixels'] for d in (src, val)]
    for name in [*src['class_pixels'], None]:
        counts = [d['class_pixels'][name] if name else d['ignored_pixels'] for d in (src, val)]
        pixels.add_row(name or 'ignored (255)', f'{counts[0]:,}', _percent(counts[0], totals[0]),
                       f'{counts[1]:,}', _percent(counts[1], totals[1]))
    console.print(pixels)

    depth = src['depth']
    if depth is None:
        console.print('source depth: none')
    else:
        console.print(f'source inverse depth: min {depth["min"]}, max {depth["max"]}, '
                      f'missing {100 * depth["missing_fraction"]:.2f}% of pixels')
    for line in (_unmapped_line('source', src), _unmapped_line('target val', val)):
        if line:
            console.print(line)
    if report.get('damaged'):
        damaged = Table(title=f'Damaged files ({len(report["damaged"])}): training would stop at the first')
        damaged.add_column('split: file and problem', overflow='fold')
        for line in report['damaged']:
            damaged.add_row(line)
        console.print(damaged)
