"""The benchmark scripts' own options (benchmarks/ is not a package: the scripts are imported from their folder)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / 'benchmarks'


@pytest.fixture
def toy_gap(monkeypatch, tmp_path):
    monkeypatch.setenv('DADA_FASTAI_CACHE', str(tmp_path / 'cache'))
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import toy_gap
    yield toy_gap
    sys.modules.pop('toy_gap', None)


def test_toy_gap_saves_each_trained_model_where_its_result_says(toy_gap, tmp_path):
    from dada_fastai.inference import load_model
    results, models = tmp_path / 'results.json', tmp_path / 'models'
    toy_gap.main(['--methods', 'source_only,dada', '--seeds', '0', '--iters', '2', '--size', '32x64',
                  '--device', 'cpu', '--json', str(results), '--save', str(models),
                  '--set', 'warm_start=0', '--set', 'toy={size: [32, 64], n_source: 8, n_target_train: 8, '
                  'n_target_val: 2}'])
    recorded = {r['method']: r for r in json.loads(results.read_text())}
    assert {m: Path(r['model']) for m, r in recorded.items()} == {
        'source_only': models / 'source_only_seed0.safetensors', 'dada': models / 'dada_seed0.safetensors'}
    plain, dada = (load_model(recorded[m]['model'], device='cpu').meta for m in ('source_only', 'dada'))
    assert (plain.depth_block, dada.depth_block, dada.feature_fusion) == (False, True, True)
    assert dada.n_classes == 7 and dada.arch == 'resnet10t' and dada.target_size == (32, 64)


def test_toy_gap_keeps_no_model_unless_asked(toy_gap, tmp_path):
    results = tmp_path / 'results.json'
    toy_gap.main(['--methods', 'source_only', '--seeds', '0', '--iters', '1', '--size', '32x64', '--device', 'cpu',
                  '--json', str(results), '--set', 'warm_start=0',
                  '--set', 'toy={size: [32, 64], n_source: 8, n_target_train: 8, n_target_val: 2}'])
    assert 'model' not in json.loads(results.read_text())[0]
    assert not list(tmp_path.rglob('*.safetensors'))
