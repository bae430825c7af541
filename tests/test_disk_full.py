"""A full disk, simulated (ENOSPC from the system call that writes a file), at each file the package writes: one line
that names the file, the space it needed and the space free, and what survives; nothing existing is damaged, no
temporary file is left behind, and `--resume` continues where the surviving checkpoint left off."""
from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from dada_fastai.checkpoint import load_checkpoint
from dada_fastai.cli import main
from dada_fastai.errors import DiskFullError
from dada_fastai.run_folder import RunFolder
from dada_fastai.storage import append_bytes, atomic_write_bytes
from e2e import cli_args, tiny_options, tiny_pair


class FullDisk:
    """Writes to files whose name contains `name` fail with ENOSPC once `after` of them have succeeded (a temporary
    file `.last.pth.XXXX.tmp` counts as `last.pth`; an atomic write counts once, at its fsync)."""

    def __init__(self, monkeypatch, name: str, after: int = 0):
        self.name, self.after, self.seen = name, after, 0
        self._write, self._fsync = os.write, os.fsync
        monkeypatch.setattr(os, 'write', self.write)
        monkeypatch.setattr(os, 'fsync', self.fsync)

    def _full(self, fd: int) -> bool:
        try:
            path = os.readlink(f'/proc/self/fd/{fd}')
        except OSError:
            return False
        return self.name in Path(path).name

    def _hit(self, fd: int) -> None:
        if self._full(fd):
            self.seen += 1
            if self.seen > self.after:
                raise OSError(errno.ENOSPC, 'No space left on device')

    def write(self, fd, data):  # appends write through os.write
        self._hit(fd)
        return self._write(fd, data)

    def fsync(self, fd):  # atomic writes end with an fsync
        self._hit(fd)
        return self._fsync(fd)


@pytest.fixture(scope='module')
def pair(tmp_path_factory):
    return tiny_pair(tmp_path_factory.mktemp('data'))


def _error(capsys, exit_info) -> str:
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith('dada-fastai: error:') and '\n' not in err, err
    return err


def _no_temporary_files(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob('*') if p.name.endswith('.tmp')]


def test_a_full_disk_at_a_checkpoint_keeps_the_previous_one_and_resume_goes_on(pair, tmp_path, monkeypatch, capsys):
    run = tmp_path / 'run'
    full = FullDisk(monkeypatch, 'last.pth', after=1)  # the checkpoint of iteration 2 is written, that of 4 is not
    with pytest.raises(SystemExit) as e:
        main(['train', *cli_args(tiny_options(*pair, iters=6, checkpoint_every=2, out=str(run)))])
    err = _error(capsys, e)
    assert 'last.pth' in err and 'needed' in err and 'free' in err, err
    assert 'iteration 2' in err and f'--resume {run}' in err, err
    assert load_checkpoint(run / 'last.pth')['iteration'] == 2
    assert _no_temporary_files(run) == []
    assert RunFolder(run).read_status()['state'] == 'failed'
    monkeypatch.undo()
    del full
    assert main(['train', '--resume', str(run)]) == 0
    assert load_checkpoint(run / 'last.pth')['iteration'] == 6 and RunFolder(run).read_results()['iters'] == 6


def test_a_full_disk_at_the_history_and_the_export_is_one_line(pair, tmp_path, monkeypatch, capsys):
    run = tmp_path / 'history'
    FullDisk(monkeypatch, 'history.csv', after=2)
    with pytest.raises(SystemExit) as e:
        main(['train', *cli_args(tiny_options(*pair, iters=4, checkpoint_every=2, log_every=1, out=str(run)))])
    err = _error(capsys, e)
    assert 'history.csv' in err and 'needed' in err, err
    rows = RunFolder(run).read_history()[1]
    assert rows and RunFolder(run).read_history()[2] == 0  # the rows written before are whole
    monkeypatch.undo()

    run = tmp_path / 'export'
    FullDisk(monkeypatch, 'export.safetensors')
    with pytest.raises(SystemExit) as e:
        main(['train', *cli_args(tiny_options(*pair, iters=2, out=str(run)))])
    err = _error(capsys, e)
    assert 'export.safetensors' in err and 'iteration 2' in err and '--resume' in err, err
    assert not (run / 'export.safetensors').exists() and _no_temporary_files(run) == []
    monkeypatch.undo()
    assert main(['train', '--resume', str(run)]) == 0 and (run / 'export.safetensors').is_file()


def test_a_full_disk_while_predicting_says_how_many_images_are_done(pair, tmp_path, monkeypatch, capsys):
    run = tmp_path / 'run'
    assert main(['train', *cli_args(tiny_options(*pair, iters=2, out=str(run)))]) == 0
    images = sorted(Path(pair[1].split(':', 1)[1]).rglob('*_leftImg8bit.png'))[:3]
    out = tmp_path / 'predictions'
    FullDisk(monkeypatch, '_seg.png', after=1)
    with pytest.raises(SystemExit) as e:
        main(['predict', str(run), *map(str, images), '--out', str(out)])
    err = _error(capsys, e)
    assert '_seg.png' in err and '1 of 3 images' in err and str(out) in err, err
    assert _no_temporary_files(out) == [] and len(list(out.glob('*_seg.png'))) == 1


def test_atomic_writes_and_appends_on_a_full_disk(tmp_path, monkeypatch):
    target = tmp_path / 'status.json'
    atomic_write_bytes(target, b'old')
    log = tmp_path / 'history.csv'
    append_bytes(log, b'iter\n1\n')
    FullDisk(monkeypatch, 'status.json')
    FullDisk(monkeypatch, 'history.csv')
    with pytest.raises(DiskFullError, match=r'status\.json \(3 B needed, .* free\)'):
        atomic_write_bytes(target, b'new')
    with pytest.raises(DiskFullError, match='history.csv') as e:
        append_bytes(log, b'2\n')
    assert isinstance(e.value, OSError)  # still an OSError for code that catches those
    assert target.read_bytes() == b'old' and log.read_bytes() == b'iter\n1\n'
    assert _no_temporary_files(tmp_path) == []
