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
