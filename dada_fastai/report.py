"""A data report: items per split, class pixels, ignored and unmapped ids, and the source's depth range.

Counts are taken on the files as stored (full resolution), before any resizing.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from .datasets import DomainDataset, Sample, open_dataset

__all__ = ['data_report', 'print_report']

_N_IDS = 65536  # raw label ids are 8- or 16-bit


def _label_stats(ds: DomainDataset, samples: list[Sample]) -> dict[str, Any]:
    """Pixels per class, ignored pixels, the raw ids without a class (those mapped to 255: void and classes
    the protocol leaves out) and, among them, the ids the dataset's format does not define at all (a sign of
    a wrong layout or mapping), with counts."""
    counts = np.zeros(_N_IDS, np.int64)
    for s in samples:
        counts += np.bincount(ds.read_raw_label(s).ravel(), minlength=_N_IDS)
    ignored = ds.lut == 255
    undefined = np.ones(_N_IDS, bool)
    undefined[list(ds.defined_ids)] = False
    return {'class_pixels': {name: int(counts[ds.lut == i].sum()) for i, name in enumerate(ds.protocol.classes)},
            'ignored_pixels': int(counts[ignored].sum()),
            'unmapped_ids': {str(i): int(counts[i]) for i in np.flatnonzero(ignored & (counts > 0))},
            'undefined_ids': {str(i): int(counts[i]) for i in np.flatnonzero(undefined & (counts > 0))}}


def _depth_stats(ds: DomainDataset, samples: list[Sample]) -> dict[str, float | None]:
    """Range of the finite inverse-depth targets and the fraction of pixels without depth."""
    low, high, missing, total = np.inf, -np.inf, 0, 0
    for s in samples:
        z = ds.read_depth(s)
        finite = z[np.isfinite(z)]
        if finite.size:
            low, high = min(low, float(finite.min())), max(high, float(finite.max()))
        missing, total = missing + z.size - finite.size, total + z.size
    return {'min': low if np.isfinite(low) else None, 'max': high if np.isfinite(high) else None,
            'missing_fraction': missing / total if total else 0.0}


def data_report(source: str, target: str, n_classes: int = 16) -> dict[str, Any]:
    """Report on a source and a target given as 'KIND:DIR' specs, as JSON-serialisable data."""
    src = open_dataset(source, n_classes=n_classes)
    tgt = open_dataset(target, n_classes=n_classes)
    src_items, tgt_train, tgt_val = src.samples('train'), tgt.samples('train'), tgt.samples('val')
    return {
        'protocol': src.protocol.name,
        'source': {'kind': src.kind, 'root': str(src.root), 'items': len(src_items), **_label_stats(src, src_items),
                   'depth': _depth_stats(src, src_items) if src.has_depth else None},
        'target_train': {'kind': tgt.kind, 'root': str(tgt.root), 'items': len(tgt_train)},
        'target_val': {'items': len(tgt_val), **_label_stats(tgt, tgt_val)},
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
