"""`dada-fastai runs`: run folders side by side (finished, failed, stopped, older and killed runs), as a
table or JSON, sorted by a column; one-line errors for folders that hold no run."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys

import pytest
from fastai.callback.core import Callback

from dada_fastai.cli import main
from dada_fastai.config import resolve_config
from dada_fastai.runs import train
from e2e import cli_args, tiny_options, tiny_pair


class _Term(Callback):
    """Send this process SIGTERM (a batch scheduler's stop) after the first iteration."""
    order = 95

    def after_batch(self):
        if self.training and self.train_iter == 1:
            os.kill(os.getpid(), signal.SIGTERM)


class _Raise(Callback):
    """Raise `exc` after the first iteration."""
    order = 95

    def __init__(self, exc: BaseException):
        self.exc = exc

    def after_batch(self):
        if self.training and self.train_iter == 1:
            raise self.exc


@pytest.fixture(scope='module')
def root(tmp_path_factory):
    """Runs in every state under one folder (some one level deeper)."""
    pair = tiny_pair(tmp_path_factory.mktemp('data'))
    root = tmp_path_factory.mktemp('runs')
    assert main(['train', *cli_args(tiny_options(*pair, iters=2, eval_every=2, out=str(root / 'done')))]) == 0
    opts = tiny_options(*pair, iters=3, eval_every=3, checkpoint_every=1)
    with pytest.raises(RuntimeError):
        train(resolve_config(None, out=str(root / 'seeds' / 'boom'), **opts), cbs=[_Raise(RuntimeError('boom'))])
    # SIGTERM stops a run as Ctrl-C does (when no other handler is set: else a plain interrupt stands in)
    stop = _Term() if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL else _Raise(KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        train(resolve_config(None, out=str(root / 'seeds' / 'cut'), **opts), cbs=[stop])
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL or isinstance(stop, _Raise)  # restored
    old = root / 'old'  # a run from before history.csv and status.json
    shutil.copytree(root / 'done', old)
    for name in ('status.json', 'history.csv'):
        (old / name).unlink()
    killed = root / 'killed'  # 'running' by a process that is gone (killed by a scheduler, say)
    shutil.copytree(root / 'seeds' / 'cut', killed)
    gone = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True, text=True)
    status = json.loads((killed / 'status.json').read_text())
    status.update(state='running', pid=int(gone.stdout), host=socket.gethostname())
    (killed / 'status.json').write_text(json.dumps(status))
    (root / 'notes').mkdir()  # not a run: skipped when looking under root
    (root / 'notes' / 'config.yaml').write_text('just: notes\n')
    return root


def _json(capsys, *args) -> list[dict]:
    capsys.readouterr()
    assert main(['runs', *map(str, args), '--json']) == 0
    return json.loads(capsys.readouterr().out)


def test_runs_in_every_state(root, capsys):
    runs = {r['run']: r for r in _json(capsys, root)}
    assert set(runs) == {'done', 'old', 'killed', 'seeds/boom', 'seeds/cut'}
    assert {k: r['status'] for k, r in runs.items()} == {'done': 'finished', 'old': 'finished', 'killed': 'stopped',
                                                        'seeds/boom': 'failed', 'seeds/cut': 'stopped'}
    res = json.loads((root / 'done' / 'results.json').read_text())
    done = runs['done']
    assert (done['method'], done['arch'], done['iters_done'], done['iters']) == ('dada', 'test_resnet', 2, 2)
    assert done['miou'] == pytest.approx(res['miou']) and done['per_class'] == pytest.approx(res['per_class'])
    assert done['duration'] > 0 and done['date'][:2] == '20' and runs['old']['miou'] == pytest.approx(res['miou'])
    boom = runs['seeds/boom']
    assert boom['error'] == 'RuntimeError: boom' and (boom['iters_done'], boom['iters']) == (1, 3)
    assert boom['miou'] is None and runs['seeds/cut']['error'] is None
    assert 'killed' in runs['killed']['error']


def test_sorted_by_a_column(root, capsys):
    by_miou = [r['run'] for r in _json(capsys, root, '--sort', 'miou')]
    assert set(by_miou[:2]) == {'done', 'old'}  # runs with an mIoU first, runs without last
    assert [r['run'] for r in _json(capsys, root, '--sort', 'run')] == ['done', 'killed', 'old', 'seeds/boom',
                                                                        'seeds/cut']
    assert [r['run'] for r in _json(capsys, root, '--sort', 'run', '--reverse')][0] == 'seeds/cut'
    iters = [r['iters_done'] for r in _json(capsys, root, '--sort', 'iters')]
    assert iters == sorted(iters, reverse=True)


def test_table_and_per_class(root, capsys):
    capsys.readouterr()
    assert main(['runs', str(root / 'done'), str(root / 'seeds')]) == 0
    out = capsys.readouterr().out
    assert all(w in out for w in ('done', 'boom', 'cut', 'finished', 'failed: RuntimeError: boom', 'stopped', '2/2',
                                  '1/3', 'mIoU'))
    assert 'construction' not in out and '…' not in out  # a pipe gets the table at its natural width
    assert main(['runs', str(root / 'done'), '--per-class']) == 0
    assert 'construction' in capsys.readouterr().out


def test_a_folder_without_runs_is_a_one_line_error(root, tmp_path, capsys):
    (tmp_path / 'empty').mkdir()
    (tmp_path / 'file.txt').write_text('x')
    for path, message in ((tmp_path / 'empty', 'is not a run folder and holds none'),
                          (tmp_path / 'file.txt', 'is not a run folder'), (tmp_path / 'none', 'not found'),
                          (root / 'notes', 'is not a run folder')):
        with pytest.raises(SystemExit) as e:
            main(['runs', str(path)])
        assert e.value.code == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith('dada-fastai: error:') and '\n' not in err and message in err, err


# ---------------------------------------------------------------------------------------------------------
# Seeds side by side
# ---------------------------------------------------------------------------------------------------------
def _written_run(folder, seed: int, miou: float, delta1: float | None = None, finished: bool = True, **options):
    """A run folder as `train` writes it (config.yaml, status.json, results.json or, unfinished, a validation row in
    history.csv), with the given results."""
    import time
    from dada_fastai.run_folder import RunFolder, write_history_rows
    cfg = resolve_config(None, **tiny_options('synthia:/s', 'cityscapes:/c', seed=seed, out=str(folder), **options))
    run = RunFolder(folder)
    run.write_config(cfg.to_dict())
    status = {'state': 'finished' if finished else 'stopped', 'iters': cfg.iters, 'iter': cfg.iters if finished else 2,
              'elapsed': 10., 'started': time.time()}
    run.write_status(status)
    if finished:
        run.write_results({'iters': cfg.iters, 'miou': miou, 'miou13': None, 'per_class': {},
                           **({'depth': {'delta1': delta1}} if delta1 is not None else {})})
    else:
        header = ['iter', 'train_loss', 'lr', 'valid_loss', 'miou', 'miou13', 'delta1', 'time']
        write_history_rows(run.history, header, [{'iter': 2, 'valid_loss': 1., 'miou': miou, 'delta1': delta1,
                                                 'time': 5.}], append=False)


def test_runs_that_differ_only_in_their_seed_are_one_row(tmp_path, capsys):
    import statistics
    root = tmp_path / 'toy'
    for seed, miou, delta1 in ((0, 40., 0.60), (1, 42., 0.62), (2, 44., 0.64)):
        _written_run(root / f'dada-{seed}', seed, miou, delta1)
    # another seed on another device, with other workers and logging: the same setting; stopped at its validation
    _written_run(root / 'dada-3', 3, 41., 0.62, finished=False, device='cpu', workers=1, log_every=1, iters=4)
    _written_run(root / 'dada-lr', 0, 30., 0.5, lr=1e-3)  # another learning rate: a group of its own
    for seed, miou in ((0, 35.), (1, 36.)):
        _written_run(root / f'so-{seed}', seed, miou, method='source_only')
    groups = {tuple(g['runs']): g for g in _groups(capsys, root)}
    dada = groups[('dada-0', 'dada-1', 'dada-2', 'dada-3')]
    assert (dada['method'], dada['arch'], dada['iters'], dada['n'], dada['seeds']) == ('dada', 'test_resnet', 4, 4,
                                                                                       [0, 1, 2, 3])
    assert dada['unfinished'] == ['dada-3']  # counted with its last validation
    assert dada['miou']['mean'] == pytest.approx(41.75) and dada['miou']['n'] == 4
    assert dada['miou']['std'] == pytest.approx(statistics.stdev([40, 42, 44, 41]))
    assert dada['delta1']['mean'] == pytest.approx(0.62) and dada['miou13'] == {'mean': None, 'std': None, 'n': 0,
                                                                                  'values': []}
    assert dada['differs'] == {'lr': 0.01} and 'seed' not in dada['settings'] and 'device' not in dada['settings']
    alone = groups[('dada-lr',)]
    assert alone['n'] == 1 and alone['miou']['std'] is None and alone['differs'] == {'lr': 0.001}
    plain = groups[('so-0', 'so-1')]
    assert plain['method'] == 'source_only' and plain['delta1']['mean'] is None
    assert plain['miou']['std'] == pytest.approx(statistics.stdev([35, 36]))
    ranked = [g['runs'][0] for g in _groups(capsys, root, '--sort', 'miou')]
    assert ranked == ['dada-0', 'so-0', 'dada-lr']
    capsys.readouterr()
    assert main(['runs', str(root), '--group']) == 0
    out = capsys.readouterr().out
    assert '3 groups of 7 runs' in out and 'dada-*' in out and 'so-*' in out and 'dada-lr' in out
    assert '41.8 ± 1.7' in out and '4 (1 unfinished)' in out and '0.620 ± 0.016' in out and 'lr=0.001' in out
    assert '30.0' in out and '30.0 ±' not in out  # one seed: no spread


def _groups(capsys, *args) -> list[dict]:
    capsys.readouterr()
    assert main(['runs', *map(str, args), '--group', '--json']) == 0
    return json.loads(capsys.readouterr().out)
