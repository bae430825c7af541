"""The data report's counts against counts computed here from the layouts' known content."""
from __future__ import annotations

import io
import json
from collections import Counter

import numpy as np
import pytest
from rich.console import Console

from dada_fastai.datasets import DatasetError
from dada_fastai.report import data_report, print_report
from layouts import (CITYSCAPES_TO_16, CLASSES7, CLASSES16, SYNTHIA_TO_16, VISTAS_LABELS, cityscapes_content,
                     folder_content, folder_key, make_cityscapes, make_folder, make_synthia, make_vistas,
                     synthia_content, synthia_name, vistas_content)


def expected_stats(labels: list[np.ndarray], mapping: dict[int, int], classes: tuple[str, ...]) -> dict:
    """class_pixels, ignored_pixels and unmapped_ids (raw ids without a class) counted with a Counter."""
    raw = Counter()
    for ids in labels:
        raw.update(int(v) for v in ids.ravel())
    class_pixels, unmapped = dict.fromkeys(classes, 0), {}
    for raw_id, n in sorted(raw.items()):
        if mapping.get(raw_id, 255) == 255:
            unmapped[str(raw_id)] = n
        else:
            class_pixels[classes[mapping[raw_id]]] += n
    return {'class_pixels': class_pixels, 'ignored_pixels': sum(unmapped.values()), 'unmapped_ids': unmapped}


def test_report_synthia_to_cityscapes(tmp_path):
    src = make_synthia(tmp_path / 'synthia', n=3)
    tgt = make_cityscapes(tmp_path / 'cs', n_train=3, n_val=2, train_labels=False)
    report = data_report(f'synthia:{src}', f'cityscapes:{tgt}')
    assert json.loads(json.dumps(report)) == report
    assert report['protocol'] == '16'
    source = report['source']
    assert (source['kind'], source['root'], source['items']) == ('synthia', str(src), 3)
    content = [synthia_content(synthia_name(i)) for i in range(3)]
    expected = expected_stats([c['class_ids'] for c in content], SYNTHIA_TO_16, CLASSES16)
    assert {k: source[k] for k in expected} == expected
    assert '40' in source['unmapped_ids'] and '0' in source['unmapped_ids']
    # 0 is SYNTHIA's void (defined, ignored as expected); 40 is no SYNTHIA id at all
    assert source['undefined_ids'] == {k: n for k, n in source['unmapped_ids'].items() if int(k) > 22}
    assert '40' in source['undefined_ids'] and '0' not in source['undefined_ids']
    depth = np.concatenate([c['depth'].ravel() for c in content]).astype(np.float64)
    assert source['depth']['min'] == pytest.approx(65536 / (depth.max() + 1))
    assert source['depth']['max'] == pytest.approx(65536 / (depth.min() + 1))
    assert source['depth']['missing_fraction'] == 0
    assert report['target_train']['items'] == 3
    val_labels = [cityscapes_content(stem)['label_ids'] for stem in ('aachen_000000_000019', 'bochum_000001_000019')]
    expected_val = expected_stats(val_labels, CITYSCAPES_TO_16, CLASSES16)
    assert {k: report['target_val'][k] for k in expected_val} == expected_val
    assert report['target_val']['undefined_ids'] == {k: n for k, n in expected_val['unmapped_ids'].items()
                                                     if int(k) > 33}
    assert report['target_val']['items'] == 2
    console = Console(file=io.StringIO(), width=400, record=True)
    print_report(report, console)
    warnings = [line for line in console.export_text().splitlines() if 'warning' in line]
    assert len(warnings) == 1 and warnings[0].startswith('warning: source:') and '40 (' in warnings[0]
    assert ' 0 (' not in warnings[0]


def test_report_folder_to_vistas_with_sparse_depth(tmp_path):
    mapping = {0: 'ignore', 7: 'flat', 11: 'construction', 24: 'human', 26: 'vehicle'}
    src = make_folder(tmp_path / 'carla', n_train=2, n_val=0, id_mapping=mapping, unit='m')
    tgt = make_vistas(tmp_path / 'vistas', n_train=1, n_val=2)
    report = data_report(f'folder:{src}', f'vistas:{tgt}', n_classes=7)
    assert json.loads(json.dumps(report)) == report
    assert report['protocol'] == '7'
    content = [folder_content(folder_key('train', rel)) for rel in ('seq_a/000000', 'seq_b/000001')]
    train_ids = {k: 255 if v == 'ignore' else CLASSES7.index(v) for k, v in mapping.items()}
    expected = expected_stats([c['label_ids'] for c in content], train_ids, CLASSES7)
    assert {k: report['source'][k] for k in expected} == expected
    assert report['source']['unmapped_ids']['99'] > 0  # in no mapping
    assert report['source']['undefined_ids'] == {k: n for k, n in expected['unmapped_ids'].items()
                                                 if int(k) not in mapping}  # 0: mapped to ignore, so defined
    d = np.concatenate([c['depth'].ravel() for c in content]).astype(np.float64)
    depth = report['source']['depth']
    assert depth['missing_fraction'] == pytest.approx((d == 0).mean())
    assert depth['min'] == pytest.approx(65536 / (d.max() * 100 + 1), rel=1e-6)
    assert depth['max'] == pytest.approx(65536 / (d[d > 0].min() * 100 + 1), rel=1e-6)
    vistas_ids = {i: tid for i, (*_, tid) in enumerate(VISTAS_LABELS)}
    val_labels = [vistas_content(f'v{j:03d}_vistas')['label_ids'] for j in range(2)]
    expected_val = expected_stats(val_labels, vistas_ids, CLASSES7)
    assert {k: report['target_val'][k] for k in expected_val} == expected_val
    assert report['target_val']['undefined_ids'] == {k: n for k, n in expected_val['unmapped_ids'].items()
                                                     if int(k) >= len(VISTAS_LABELS)}

    console = Console(file=io.StringIO(), width=160, record=True)
    print_report(report, console)
    text = console.export_text()
    assert 'vehicle' in text and 'warning' in text and 'missing' in text


def test_report_source_without_depth(tmp_path):
    cs = make_cityscapes(tmp_path / 'cs', n_train=2, n_val=1)
    report = data_report(f'cityscapes:{cs}', f'cityscapes:{cs}')
    assert report['source']['depth'] is None
    console = Console(file=io.StringIO(), width=160, record=True)
    print_report(report, console)
    assert 'source depth: none' in console.export_text()


def test_report_raises_reader_errors(tmp_path):
    src = make_synthia(tmp_path / 'synthia', n=1)
    with pytest.raises(DatasetError):
        data_report(f'synthia:{src}', f'synthia:{src}')  # SYNTHIA has no val split
