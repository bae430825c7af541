"""A run's history (history.csv, curves.png, status.json), its continuation after a resume (also from a
missing or damaged file), TensorBoard and W&B logging, and plain progress lines when the output is a file."""
from __future__ import annotations

import csv
import shutil
import sys
from pathlib import Path

import pytest

from dada_fastai.cli import main
from dada_fastai.config import resolve_config
from dada_fastai.callbacks import progress_mode
from dada_fastai.history import default_intervals, nice_interval, read_history
from dada_fastai.plots import draw_curves
from dada_fastai.run_folder import RunFolder
from dada_fastai.runs import resume, train
from e2e import Crash as _Crash, cli_args, tiny_options, tiny_pair

TERMS = ('seg', 'depth', 'adv', 'd_src', 'd_trg')


@pytest.fixture(scope='module')
def pair(tmp_path_factory):
    return tiny_pair(tmp_path_factory.mktemp('data'))


def _opts(pair, **kw):
    return tiny_options(*pair, **{**dict(iters=4, checkpoint_every=2, eval_every=2, log_every=1), **kw})


@pytest.fixture(scope='module')
def full(pair, tmp_path_factory):
    """An uninterrupted run."""
    out = tmp_path_factory.mktemp('runs') / 'full'
    train(resolve_config(None, out=str(out), **_opts(pair)))
    return out


@pytest.fixture(scope='module')
def crashed(pair, tmp_path_factory):
    """The same run, interrupted after iteration 3 (its last checkpoint at 2)."""
    out = tmp_path_factory.mktemp('runs') / 'crashed'
    with pytest.raises(KeyboardInterrupt):
        train(resolve_config(None, out=str(out), **_opts(pair)), cbs=[_Crash(3)])
    return out


def _rows(run: Path) -> list[dict]:
    with open(run / 'history.csv', newline='') as f:
        return list(csv.DictReader(f))


def _keys(rows) -> list[tuple[int, str]]:
    return [(int(r['iter']), 'valid' if r['miou'] else 'train') for r in rows]


def _values(rows) -> list[dict]:
    return [{k: v for k, v in r.items() if k != 'time'} for r in rows]


def test_intervals_follow_the_iteration_count():
    assert [nice_interval(n, 1000) for n in (300, 2000, 90000)] == [1, 2, 100]
    toy, paper = default_intervals(300), default_intervals(90000)
    assert (toy['log_every'], toy['print_every'], toy['image_every']) == (1, 5, 20)
    assert (paper['log_every'], paper['print_every'], paper['image_every']) == (100, 2000, 5000)
    assert default_intervals(300, fast=True)['log_every'] == 50  # fast mode reads the device every 50 at most


def test_history_of_a_run(full):
    rows = _rows(full)
    assert list(rows[0])[:2] == ['iter', 'time'] and {'lr', 'lr_head', 'lr_d', 'train_loss', 'miou'} <= set(rows[0])
    assert _keys(rows) == [(1, 'train'), (2, 'train'), (2, 'valid'), (3, 'train'), (4, 'train'), (4, 'valid')]
    for r in rows:
        if r['miou']:  # a validation: training columns empty
            assert all(r[t] == '' for t in TERMS + ('lr',)) and float(r['valid_loss']) > 0
        else:
            assert all(float(r[t]) >= 0 for t in TERMS) and float(r['lr_head']) == pytest.approx(10 * float(r['lr']))
    times = [float(r['time']) for r in rows]
    assert times == sorted(times)
    import json
    res = json.loads((full / 'results.json').read_text())
    assert float(rows[-1]['miou']) == pytest.approx(res['miou'], abs=1e-4)  # the final evaluation, once
    assert (full / 'curves.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    status = RunFolder(full).read_status()
    assert status['state'] == 'finished' and status['iter'] == status['iters'] == 4 and status['sessions'] == 1


def test_resume_continues_the_history_without_duplicates(full, crashed, tmp_path):
    run = tmp_path / 'run'
    shutil.copytree(crashed, run)
    assert _keys(_rows(run))[-1] == (3, 'train')  # written before the crash, after the checkpoint at 2
    assert RunFolder(run).read_status()['state'] == 'stopped'
    resume(run)
    rows = _rows(run)
    assert _keys(rows) == _keys(_rows(full))
    assert _values(rows) == _values(_rows(full))  # an exact resume: the same numbers as the uninterrupted run
    status = RunFolder(run).read_status()
    assert status['state'] == 'finished' and status['sessions'] == 2


def _drawings(monkeypatch) -> list[list[int]]:
    """Record, for each drawing of curves.png, the iterations of the validations the history held then."""
    import dada_fastai.history as history
    drawn = []

    def draw(path, out, *args, **kwargs):
        drawn.append([int(r['iter']) for r in read_history(path)[1] if r['miou']])
        return draw_curves(path, out, *args, **kwargs)
    monkeypatch.setattr(history, 'draw_curves', draw)
    return drawn


def test_curves_are_drawn_at_most_every_half_minute_and_at_the_end(pair, tmp_path, monkeypatch):
    drawn = _drawings(monkeypatch)
    train(resolve_config(None, out=str(tmp_path / 'run'), **_opts(pair, iters=6, checkpoint_every=0)))
    # the first validation drawn at once; the one at 4 (seconds later) waits for the end of the fit; the final
    # evaluation (not a new row: it is the validation at 6) is drawn again
    assert drawn == [[2], [2, 4, 6], [2, 4, 6]]
    assert (tmp_path / 'run' / 'curves.png').is_file()


def test_a_run_that_stops_draws_the_validations_it_made(pair, tmp_path, monkeypatch):
    drawn = _drawings(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        train(resolve_config(None, out=str(tmp_path / 'run'), **_opts(pair, iters=8, checkpoint_every=0)),
              cbs=[_Crash(5)])
    assert drawn == [[2], [2, 4]]


def _cut_mid_row(p: Path):
    text = p.read_text()
    p.write_text(text[:len(text) - 25])


def _garbage_header(p: Path):
    p.write_bytes(b'\x00\x00\xff garbage\n1,2,3\n')


@pytest.mark.parametrize('damage, warning, kept', [
    (lambda p: p.unlink(), 'missing', 0),
    (_cut_mid_row, 'damaged row', 3),
    (_garbage_header, 'damaged', 0),
])
def test_missing_or_damaged_history_still_resumes(crashed, tmp_path, damage, warning, kept):
    run = tmp_path / 'run'
    shutil.copytree(crashed, run)
    damage(run / 'history.csv')
    with pytest.warns(UserWarning, match=warning):
        res = resume(run)
    assert res['iters'] == 4
    header, rows, damaged, problem = read_history(run / 'history.csv')
    assert problem is None and damaged == 0 and header[:2] == ['iter', 'time']
    keys = _keys(rows)
    assert len(keys) == len(set(keys)) and keys[-1] == (4, 'valid')
    assert keys[:kept] == [(1, 'train'), (2, 'train'), (2, 'valid')][:kept]  # what was readable up to the checkpoint
    assert [k for k in keys if k[0] > 2] == [(3, 'train'), (4, 'train'), (4, 'valid')]
    if damage is _garbage_header:
        assert (run / 'history.damaged.csv').read_bytes().startswith(b'\x00\x00')
    assert (run / 'curves.png').is_file()


def test_read_history_leaves_out_broken_rows(tmp_path):
    p = tmp_path / 'history.csv'
    p.write_text('iter,time,seg,miou\n1,0.5,1.2,\n2,0.7,x,\n2,0.8,,30.5\n3,0.9\n1,0.5,1.2,\n4,1.0,1.1,')
    header, rows, damaged, problem = read_history(p)
    assert header == ['iter', 'time', 'seg', 'miou'] and problem is None
    assert [r['iter'] for r in rows] == ['1', '2', '4'] and damaged == 2  # 'x', the short row; the duplicate dropped
    assert read_history(tmp_path / 'none.csv')[3] == 'missing'
    p.write_text('not,a,history\n1,2,3\n')
    assert read_history(p)[3] == 'no header'
    assert draw_curves(p, tmp_path / 'c.png') is None and not (tmp_path / 'c.png').exists()


def test_progress_lines_when_the_output_is_not_a_terminal(pair, tmp_path, capsys):
    class Tty:
        def isatty(self):
            return True

    assert progress_mode('auto', Tty()) == 'bar' and progress_mode('auto', tmp_path.joinpath('f').open('w')) == 'lines'
    assert progress_mode('none', Tty()) == 'none'
    capsys.readouterr()
    opts = tiny_options(*pair, iters=4, eval_every=2, print_every=2, out=str(tmp_path / 'run'))
    assert main(['train', *cli_args(opts)]) == 0
    out = capsys.readouterr().out
    assert '\r' not in out and '█' not in out
    lines = [ln for ln in out.splitlines() if ln.startswith('iter ')]
    assert [ln.split()[1] for ln in lines] == ['2/4', '2/4', '4/4', '4/4']
    train_line = lines[0]
    assert all(f' {t} ' in train_line for t in TERMS) and ' lr ' in train_line and 'it/s' in train_line and 'left' in train_line
    assert 'valid' in lines[1] and 'miou' in lines[1]


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob('*')}


def test_tensorboard_scalars_and_image_grids_and_nothing_outside_the_run(pair, tmp_path, monkeypatch):
    pytest.importorskip('tensorboard')
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    cwd = tmp_path / 'cwd'
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    data = Path(pair[0].split(':', 1)[1]).parent
    before = _files(data)
    opts = tiny_options(*pair, iters=4, eval_every=2, log='tensorboard', image_every=2, out=str(cwd / 'run'))
    assert main(['train', *cli_args(opts)]) == 0
    assert {p.name for p in cwd.iterdir()} == {'run'} and _files(data) == before
    ea = EventAccumulator(str(cwd / 'run' / 'tensorboard'), size_guidance={'images': 0, 'scalars': 0})
    ea.Reload()
    tags = set(ea.Tags()['scalars'])
    assert {f'train/{t}' for t in TERMS} | {'train/loss', 'lr/lr', 'lr/lr_d', 'valid/miou', 'valid/loss'} <= tags
    assert [e.step for e in ea.Scalars('train/seg')] == [1, 2, 3, 4]
    rows = _rows(cwd / 'run')
    assert [round(e.value, 4) for e in ea.Scalars('valid/miou')] == [round(float(r['miou']), 4) for r in rows if r['miou']]
    images = ea.Images('valid/image_prediction_depth')
    assert [e.step for e in images] == [2, 4]
    assert images[0].width == 3 * 64 + 4 and images[0].height == 2 * 32 + 2  # 2 validation images x 3 panels


def test_missing_tensorboard_is_a_one_line_error(pair, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, 'tensorboard', None)
    monkeypatch.setitem(sys.modules, 'torch.utils.tensorboard', None)
    opts = tiny_options(*pair, iters=2, log='tensorboard', out=str(tmp_path / 'run'))
    with pytest.raises(SystemExit) as e:
        main(['train', *cli_args(opts)])
    assert e.value.code == 1
    err = capsys.readouterr().err.strip()
    assert '\n' not in err and 'pip install' in err and '[tensorboard]' in err, err
    assert not (tmp_path / 'run').exists()
    with pytest.raises(SystemExit):
        main(['train', '--log', 'mlflow'])
    assert "--log must be tensorboard, wandb, or both (tensorboard,wandb), not 'mlflow'" in capsys.readouterr().err


def test_wandb_offline(pair, tmp_path, monkeypatch):
    pytest.importorskip('wandb')
    for var in ('WANDB_CACHE_DIR', 'WANDB_DATA_DIR', 'WANDB_ARTIFACT_DIR', 'WANDB_DIR'):
        monkeypatch.setenv(var, '')  # recorded, so that the environment comes back as it was
        monkeypatch.delenv(var)
    monkeypatch.setenv('WANDB_MODE', 'offline')
    monkeypatch.setenv('WANDB_SILENT', 'true')
    run = tmp_path / 'run'
    opts = tiny_options(*pair, iters=2, eval_every=2, log='wandb', image_every=2, out=str(run))
    assert main(['train', *cli_args(opts)]) == 0
    run_id = (run / 'wandb' / 'run_id').read_text().strip()
    offline = list((run / 'wandb').glob(f'offline-run-*-{run_id}'))
    assert len(offline) == 1 and (offline[0] / f'run-{run_id}.wandb').stat().st_size > 0
    assert RunFolder(run).read_status()['state'] == 'finished'
