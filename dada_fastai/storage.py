"""Writing files so that nothing is lost: atomic writes (a temporary file, then a rename), appends flushed to the
system, and a full disk (or quota) turned into one line that names the file, the space it needed and the space
free. And where the package writes on its own: its cache (the toy pair, warm starts)."""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import DiskFullError

__all__ = ['cache_dir', 'atomic_write_bytes', 'append_bytes', 'no_space', 'human_size']

_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}  # no space left on the device, or the user's quota exceeded


def cache_dir(*parts: str) -> Path:
    """The package's cache folder (not created), or a path inside it: `$DADA_FASTAI_CACHE` when set, else
    `$XDG_CACHE_HOME/dada_fastai` (the Linux convention that platformdirs and other tools follow), else
    `~/.cache/dada_fastai`."""
    own = os.environ.get('DADA_FASTAI_CACHE')
    if own:
        root = Path(own).expanduser()
    else:
        xdg = os.environ.get('XDG_CACHE_HOME')
        root = (Path(xdg).expanduser() if xdg and Path(xdg).is_absolute() else Path.home() / '.cache') / 'dada_fastai'
    return root.joinpath(*parts)


def human_size(n: float) -> str:
    """A byte count as people read it: '812 B', '3.4 KB', '176.2 MB', '1.3 GB' (powers of 1024)."""
    for unit in ('B', 'KB', 'MB', 'GB', 'TB'):
        if abs(n) < 1024 or unit == 'TB':
            return f'{n:.0f} {unit}' if unit == 'B' else f'{n:.1f} {unit}'
        n /= 1024
    return f'{n:.1f} TB'


def _free(folder: Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


@contextmanager
def no_space(path: str | Path, needed: int):
    """Turn an `OSError` for lack of space (ENOSPC, or EDQUOT: a quota) raised inside the block into a
    `DiskFullError` naming `path`, the `needed` bytes and the bytes free where it was written."""
    try:
        yield
    except DiskFullError:
        raise
    except OSError as e:
        if e.errno not in _NO_SPACE:
            raise
        path = Path(path)
        free = _free(path.parent if path.parent.exists() else Path.cwd())
        free_text = f', {human_size(free)} free' if free is not None else ''
        what = 'quota exceeded' if e.errno == errno.EDQUOT else 'no space left on the device'
        raise DiskFullError(f'{what}: could not write {path} ({human_size(needed)} needed{free_text})') from None


def atomic_write_bytes(path: str | Path, data: bytes, keep: str | Path | None = None) -> Path:
    """Write `data` to `path` through a temporary file in the same folder and an atomic rename: a crash or a full
    disk leaves the previous file intact (and no temporary file: a full disk raises `DiskFullError`). With `keep`,
    the previous file also becomes `keep` (a hard link, or a copy where links are not supported) once the new one is
    complete: `path` never goes missing."""
    path = Path(path)
    with no_space(path, len(data)):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
        try:
            with os.fdopen(fd, 'wb') as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            if keep is not None and path.exists():
                _keep_previous(path, Path(keep))
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return path


def _keep_previous(path: Path, keep: Path) -> None:
    """Make `keep` a copy of `path` (a hard link where the filesystem has them), atomically, leaving `path` as it is."""
    tmp = keep.with_name(f'.{keep.name}.{os.getpid()}.tmp')
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(path, tmp)
        except OSError:
            shutil.copyfile(path, tmp)
        os.replace(tmp, keep)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def append_bytes(path: str | Path, data: bytes) -> Path:
    """Append `data` to `path` and flush it to the system (a crash loses nothing written); a full disk raises
    `DiskFullError`, and what was there before stays."""
    path = Path(path)
    with no_space(path, len(data)):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            view = memoryview(data)
            try:
                while view:
                    view = view[os.write(fd, view):]
            except OSError:
                os.ftruncate(fd, size)  # no half row left behind
                raise
        finally:
            os.close(fd)
    return path
