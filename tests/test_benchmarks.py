"""The benchmark scripts' own options (benchmarks/ is not a package: the scripts are imported from their folder)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from e2e import built_stages

BENCHMARKS = Path(__file__).resolve().parents[1] / 'benchmarks'
TINY = ['--seeds', '0', '--size', '32x64', '--set', 'warm_start=0',
        '--set', 'toy={size: [32, 64], n_source: 8, n_target_train: 8, n_target_val: 2}']


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
    toy_gap.main(['--methods', 'source_only,dada', '--iters', '2', '--json', str(results), '--save', str(models),
                  *TINY])
    recorded = {r['method']: r for r in json.loads(results.read_text())}
    assert {m: Path(r['model']) for m, r in recorded.items()} == {
        'source_only': models / 'source_only_seed0.safetensors', 'dada': models / 'dada_seed0.safetensors'}
    plain, dada = (load_model(recorded[m]['model'], device='cpu').meta for m in ('source_only', 'dada'))
    assert (plain.depth_block, dada.depth_block, dada.feature_fusion) == (False, True, True)
    assert dada.n_classes == 7 and dada.arch == 'resnet10t' and dada.target_size == (32, 64)


def test_toy_gap_keeps_no_model_unless_asked_and_skips_what_its_json_holds(toy_gap, tmp_path, capsys):
    results = tmp_path / 'results.json'
    toy_gap.main(['--methods', 'source_only', '--iters', '1', '--json', str(results), *TINY])
    assert 'model' not in json.loads(results.read_text())[0]
    assert not list(tmp_path.rglob('*.safetensors'))
    capsys.readouterr()
    toy_gap.main(['--methods', 'source_only', '--iters', '1', '--json', str(results), *TINY])  # the same toy
    out = capsys.readouterr().out
    assert 'source_only seed 0: already in' in out and 'S1 source only' in out
    assert len(json.loads(results.read_text())) == 1


def test_toy_gap_takes_a_preset_and_an_explicit_null(toy_gap, tmp_path, monkeypatch):
    built = built_stages(monkeypatch, toy_gap)
    preset = tmp_path / 'recipe.yaml'
    preset.write_text('lambda_adv: 0.002\nd_lr: 0.0003\nfusion_bias: 0.5\ndevice: cpu\n')
    results = tmp_path / 'results.json'
    toy_gap.main(['--methods', 'dada', '--iters', '1', '--json', str(results), '--config', str(preset),
                  '--set', 'd_lr=4e-4', '--set', 'fusion_bias=null', *TINY])
    (cfg,) = built
    assert (cfg.lambda_adv, cfg.d_lr, cfg.fusion_bias) == (0.002, 4e-4, None)  # --set over the preset
    assert cfg.lr == 2e-3 and cfg.arch == 'resnet10t'  # the toy defaults under both
    assert cfg.device == 'cpu'  # the preset's: --device is not given
    assert 'fusion_bias=None' in json.loads(results.read_text())[0]['overrides']


@pytest.mark.parametrize('bad, says', [('bs=null', 'bs must be a positive integer'),
                                       ('seed=3', 'seed is set by toy_gap.py itself')])
def test_toy_gap_refuses_a_bad_option_before_training(toy_gap, tmp_path, capsys, bad, says):
    with pytest.raises(SystemExit) as e:
        toy_gap.main(['--json', str(tmp_path / 'r.json'), '--set', bad])
    assert e.value.code == 2 and says in capsys.readouterr().err
    assert not (tmp_path / 'r.json').exists() and not (tmp_path / 'cache').exists()


def test_the_command_line_reproduces_toy_gaps_numbers(toy_gap, tmp_path, capsys):
    """The README's command sequence (`dada-fastai train --method M --seed S --out runs/toy/M-S` for each method and
    seed, then `dada-fastai runs runs/toy --group`) gives toy_gap.py's numbers: the same method and seed, the same
    mIoU, per class and depth, and the group's mean is it."""
    from dada_fastai.cli import main
    toy = '{size: [32, 64], n_source: 8, n_target_train: 8, n_target_val: 2}'
    results = tmp_path / 'results.json'
    toy_gap.main(['--methods', 'dada', '--iters', '2', '--json', str(results), *TINY, '--set', 'warm_start=2'])
    (benchmark,) = json.loads(results.read_text())
    preset = tmp_path / 'tiny.yaml'  # what TINY and --set give toy_gap.py: the toy pair's size, its warm start
    preset.write_text(f'warm_start: 2\ntoy: {toy}\n')
    out = tmp_path / 'runs' / 'toy' / 'dada-0'
    assert main(['train', '--config', str(preset), '--method', 'dada', '--seed', '0', '--iters', '2', '--source-size',
                 '32x64', '--target-size', '32x64', '--out', str(out)]) == 0
    trained = json.loads((out / 'results.json').read_text())
    assert trained['miou'] == benchmark['miou'] and trained['per_class'] == benchmark['per_class']
    assert trained['depth'] == benchmark['depth']
    capsys.readouterr()
    assert main(['runs', str(tmp_path / 'runs' / 'toy'), '--group', '--json']) == 0
    (group,) = json.loads(capsys.readouterr().out)
    assert group['miou']['mean'] == benchmark['miou'] and group['seeds'] == [0] and group['method'] == 'dada'
