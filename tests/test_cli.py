"""`dada-fastai` end to end on tiny datasets in the real layouts: train, evaluate, predict, resume,
data-report, and the one-line errors."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dada_fastai.cli import main
from e2e import cli_args, tiny_options, tiny_pair


@pytest.fixture(scope='module')
def pair(tmp_path_factory):
    return tiny_pair(tmp_path_factory.mktemp('data'))


@pytest.fixture(scope='module')
def run(pair, tmp_path_factory):
    """A run trained through the command line."""
    out = tmp_path_factory.mktemp('runs') / 'dada'
    assert main(['train', *cli_args(tiny_options(*pair, iters=4, out=str(out)))]) == 0
    return out


def _one_line_error(capsys, exit_info, code: int = 1) -> str:
    """The error line on stderr of a command that `exit_info` (pytest's `raises(SystemExit)`) saw exit with `code`."""
    assert exit_info.value.code == code, exit_info.value.code
    err = capsys.readouterr().err.strip()
    assert err.startswith('dada-fastai: error:') and '\n' not in err, err
    return err


def test_train_writes_a_complete_run(run, capsys):
    names = {p.name for p in run.iterdir()}
    assert {'config.yaml', 'last.pth', 'export.safetensors', 'results.json', 'results.png'} <= names
    res = json.loads((run / 'results.json').read_text())
    assert res['iters'] == 4 and 0 <= res['miou'] <= 100 and set(res['per_class']) == {
        'flat', 'construction', 'object', 'nature', 'sky', 'human', 'vehicle'}
    import yaml
    cfg = yaml.safe_load((run / 'config.yaml').read_text())
    assert cfg['method'] == 'dada' and cfg['iters'] == 4 and cfg['arch'] == 'test_resnet'


def test_evaluate_json_and_negative_transfer(run, pair, capsys, tmp_path):
    capsys.readouterr()
    assert main(['evaluate', str(run), '--json']) == 0
    res = json.loads(capsys.readouterr().out)
    assert set(res) >= {'miou', 'miou13', 'per_class'} and res['miou13'] is None
    saved = json.loads((run / 'results.json').read_text())
    assert res['miou'] == pytest.approx(saved['miou'])  # same protocol as the Learner's validation
    base = tmp_path / 'so'
    assert main(['train', *cli_args(tiny_options(*pair, iters=2, method='source_only', out=str(base)))]) == 0
    capsys.readouterr()
    assert main(['evaluate', str(run / 'export.safetensors'), '--target', pair[1], '--baseline',
                 str(base / 'last.pth'), '--json']) == 0
    res = json.loads(capsys.readouterr().out)
    assert 0 <= res['negative_transfer'] <= 100 and res['images'] == 2


def test_predict_writes_colour_pngs(run, pair, tmp_path):
    images = Path(pair[1].split(':', 1)[1]) / 'leftImg8bit' / 'val'
    assert main(['predict', str(run), str(images), '--out', str(tmp_path / 'pred')]) == 0
    from dada_fastai.datasets import read_array
    segs = sorted((tmp_path / 'pred').glob('*_seg.png'))
    depths = sorted((tmp_path / 'pred').glob('*_depth.png'))
    assert len(segs) == len(depths) == 2
    seg = read_array(segs[0])
    assert seg.shape == (40, 72, 3) and seg.dtype == np.uint8


def test_predict_reads_16_bit_images_as_training_does(run, tmp_path):
    """A 16-bit image predicts as its 8-bit version (`// 257`, the datasets' one conversion), not wrapped modulo 256."""
    from dada_fastai.datasets import read_array, write_png
    rgb = np.random.default_rng(3).integers(0, 256, (40, 72, 3), dtype=np.uint8)
    write_png(tmp_path / 'in8' / 'a.png', rgb)
    sixteen = np.minimum(rgb.astype(np.int64) * 257 + 200, 65535).astype(np.uint16)  # // 257 gives rgb; % 256 not
    write_png(tmp_path / 'in16' / 'a.png', sixteen)
    for name in ('in8', 'in16'):
        assert main(['predict', str(run), str(tmp_path / name), '--out', str(tmp_path / f'out_{name}')]) == 0
    for kind in ('seg', 'depth'):
        a, b = (read_array(tmp_path / f'out_{n}' / f'a_{kind}.png') for n in ('in8', 'in16'))
        assert np.array_equal(a, b), kind


def test_resume_continues_to_more_iterations(run, capsys):
    assert main(['train', '--resume', str(run), '--iters', '6']) == 0
    assert json.loads((run / 'results.json').read_text())['iters'] == 6


def test_each_method_trains_through_the_cli(pair, tmp_path):
    for method in ('source_only', 'advent', 's6'):
        assert main(['train', *cli_args(tiny_options(*pair, iters=1, method=method, out=str(tmp_path / method)))]) == 0


def test_fast_mode_with_frozen_batchnorm_through_the_cli(pair, tmp_path):
    import yaml
    out = tmp_path / 'fast'
    opts = tiny_options(*pair, iters=2, mode='fast', bn='frozen', source_size='32x64', out=str(out))
    assert main(['train', *cli_args(opts)]) == 0
    cfg = yaml.safe_load((out / 'config.yaml').read_text())
    assert cfg['mode'] == 'fast' and cfg['bn'] == 'frozen'


def test_toy_default_from_a_config_file(tmp_path, monkeypatch):
    monkeypatch.setenv('DADA_FASTAI_CACHE', str(tmp_path / 'cache'))
    cfg = tmp_path / 'toy.yaml'
    cfg.write_text('arch: test_resnet\niters: 2\nbs: 2\nsource_size: 32x64\ntarget_size: 32x64\nndf: 8\n'
                   'toy: {size: [32, 64], n_source: 4, n_target_train: 4, n_target_val: 2}\n')
    assert main(['train', '--config', str(cfg), '--out', str(tmp_path / 'run')]) == 0
    assert (tmp_path / 'run' / 'results.png').is_file()


def test_data_report_json(pair, capsys):
    assert main(['data-report', '--source', pair[0], '--target', pair[1], '--classes', '7', '--json']) == 0
    res = json.loads(capsys.readouterr().out)
    assert res['source']['items'] == 4 and res['target_train']['items'] == 3 and res['target_val']['items'] == 2


def test_list_presets(capsys):
    assert main(['train', '--list-presets']) == 0
    out = capsys.readouterr().out
    assert 'synthia2cityscapes_dada' in out and 'ablation_s6' in out


@pytest.mark.parametrize('args, message', [
    (['train', '--source', 'synthia:/nonexistent', '--target', 'cityscapes:/nonexistent'], 'dada-fastai data-report'),
    (['train', '--source', 'carla:/x', '--target', 'cityscapes:/y'], 'carla'),
    (['train', '--source', 'synthia:/x'], 'both --source and --target'),
    (['train', '--config', 'no_such_preset'], 'synthia2cityscapes_dada'),
    (['train', '--device', 'cuda:0', '--iters', '1'], 'CUDA is not available'),
    (['train', '--source-size', '12by40'], 'HxW'),
    (['train', '--mode', 'faithful', '--precision', 'bf16'], 'add --mode fast'),
    (['train', '--mode', 'faithful', '--compile'], 'add --mode fast'),
    (['evaluate', '/nonexistent/run'], 'not found'),
    (['predict', '/nonexistent/run', 'x.png'], 'not found'),
])
def test_errors_are_one_line(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    import torch
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)  # the same answer on a GPU machine
    with pytest.raises(SystemExit) as e:
        main(args)
    err = _one_line_error(capsys, e)
    assert message in err, err
    assert not (tmp_path / 'runs').exists() or not any((tmp_path / 'runs').iterdir())


def test_unknown_option_values_list_the_valid_ones(capsys):
    with pytest.raises(SystemExit) as e:
        main(['train', '--method', 'dadaa'])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert 'source_only' in err and 'advent' in err and 'dada' in err
    assert main(['nonsense']) == 2
    assert 'train' in capsys.readouterr().err


def test_console_script_exit_code_and_one_line(tmp_path):
    proc = subprocess.run([sys.executable, '-m', 'dada_fastai.cli', 'data-report', '--source',
                           f'synthia:{tmp_path}/none', '--target', f'cityscapes:{tmp_path}/none'],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and 'RGB/' in lines[0] and 'Traceback' not in proc.stderr


def test_vistas_target_evaluates_as_it_validates(tmp_path, capsys):
    """Vistas images keep their aspect ratio and are padded, in training, validation and `evaluate` alike:
    the evaluation of the trained run gives the Learner's own validation result."""
    from layouts import make_synthia, make_vistas
    src = make_synthia(tmp_path / 'synthia', n=4, size=(36, 52))
    trg = make_vistas(tmp_path / 'vistas', n_train=3, n_val=2, size=(30, 40))
    out = tmp_path / 'run'
    opts = tiny_options(f'synthia:{src}', f'vistas:{trg}', iters=2, target_size='32x64', out=str(out))
    assert main(['train', *cli_args(opts)]) == 0
    capsys.readouterr()
    from dada_fastai.metrics import ConfusionMatrix
    from dada_fastai.model import DADA
    seen, forward, accumulate = [], DADA.forward, ConfusionMatrix.accumulate

    def spy_forward(self, x):  # what the network is fed
        assert not torch.backends.cudnn.allow_tf32  # evaluation in IEEE float32, as the reference
        seen.append(x.detach().clone())
        return forward(self, x)

    def spy_accumulate(self, seg, label):  # the size its prediction is scored at
        seen[-1] = (seen[-1], tuple(label.shape[-2:]))
        return accumulate(self, seg, label)

    DADA.forward, ConfusionMatrix.accumulate = spy_forward, spy_accumulate
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = True
    try:
        assert main(['evaluate', str(out), '--json']) == 0
        assert torch.backends.cudnn.allow_tf32  # restored
    finally:
        DADA.forward, ConfusionMatrix.accumulate = forward, accumulate
        torch.backends.cudnn.allow_tf32 = tf32
    res = json.loads(capsys.readouterr().out)
    assert res['miou'] == pytest.approx(json.loads((out / 'results.json').read_text())['miou'])
    # 40x30 (WxH) images into 64x32: 42x32 at the left (int(40 * 32/30)), black after; labels 30x40 padded to 30x60
    x, out_size = seen[0]
    assert x.shape == (1, 3, 32, 64) and tuple(out_size) == (30, 60)
    black = x[0, :, :, 42:]
    assert (black == black[:, :1, :1]).all() and not (x[0, :, :, 41:42] == black[:, :1, :1]).all()

    # prediction: padded as in training, the padding cut off before resizing back to the image's size
    from dada_fastai.inference import load_model
    lm = load_model(out)
    assert lm.meta['fit'] == 'pad'

    class Content(torch.nn.Module):
        """Class 1 where the input is image, class 0 on the padding (the input's top-right pixel)."""
        def forward(self, x):
            content = (x != x[:, :, :1, -1:]).any(1, keepdim=True).float()
            return torch.cat([1 - content, content], 1), None

    lm.model = Content()
    rgb = np.random.default_rng(0).integers(30, 255, (30, 40, 3), dtype=np.uint8)
    _, (pred, depth), _ = lm.predict(rgb, input_size=(32, 64))
    assert pred.shape == (30, 40) and (pred == 1).all() and depth is None
    pred_dir = tmp_path / 'pred'
    images = trg / 'validation' / 'images'
    assert main(['predict', str(out), str(images), '--out', str(pred_dir)]) == 0
    from dada_fastai.datasets import read_array
    assert read_array(sorted(pred_dir.glob('*_seg.png'))[0]).shape == (30, 40, 3)


def test_preset_numbers_written_without_a_dot_are_numbers(tmp_path):
    """YAML reads `1e-3` as a string: options come back as their types, or one clear error."""
    from dada_fastai.config import ConfigError, resolve_config
    cfg_file = tmp_path / 'run.yaml'
    cfg_file.write_text('lambda_adv: 1e-2\nlr: 2e-3\niters: 1000.0\naugment: "yes"\n')
    cfg = resolve_config(cfg_file)
    assert (cfg.lambda_adv, cfg.lr, cfg.iters, cfg.augment) == (0.01, 0.002, 1000, True)
    assert type(cfg.lambda_adv) is float and type(cfg.iters) is int
    cfg_file.write_text('lr: fast\n')
    with pytest.raises(ConfigError, match=f"lr must be a float in {cfg_file}, not 'fast'"):
        resolve_config(cfg_file)


def test_every_training_option_is_a_command_line_option():
    """Every field of TrainConfig can be set from the command line, except the three that take structures (the
    reference backbone's block counts, the toy pair's settings and the warm start's own recipe: through --config)."""
    from dataclasses import fields
    from dada_fastai.cli import _parser
    from dada_fastai.config import TrainConfig
    flags = {s for a in _parser('train')._actions for s in a.option_strings}
    missing = {f.name for f in fields(TrainConfig)} - {'layers', 'toy', 'warm_start_recipe'}
    missing = {name for name in missing if '--' + name.replace('_', '-') not in flags}
    assert not missing
    args = vars(_parser('train').parse_args(['--augment', '--lambda-depth', '1', '--depth-scale', '0.01',
                                             '--warm-start', '5', '--norm', 'imagenet', '--ndf', '16']))
    assert args['augment'] is True and args['lambda_depth'] == 1. and args['depth_scale'] == 0.01
    assert args['warm_start'] == 5 and args['norm'] == 'imagenet' and args['ndf'] == 16
