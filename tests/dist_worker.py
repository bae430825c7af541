"""One process of the 2-process distributed test (run by `accelerate launch` from test_distributed.py):
trains from a config file and saves this rank's final weights, what it saw and the files it wrote in the run folder."""
import json
import os
import sys

import torch
from fastai.callback.core import Callback
from fastai.torch_core import rank_distrib

from dada_fastai.config import resolve_config
from dada_fastai.runs import train
from e2e import Poison


class Record(Callback):
    """Remember the source images this process trained on, and save its weights at the end."""
    order = 99

    def __init__(self, out: str):
        self.out, self.seen = out, []

    def before_batch(self):
        if self.training:
            self.seen.append(float(self.xb[0].sum()))

    def after_fit(self):
        if not self.learn.train_iter:  # the final evaluation's validation pass (no training)
            return
        model = getattr(self.learn.model, 'module', self.learn.model)
        guard = getattr(self.learn, 'non_finite_guard', None)
        teacher = getattr(getattr(self.learn, 'teacher', None), 'model', None)
        torch.save({'model': model.state_dict(), 'd': self.learn.dada.discriminators.state_dict(),
                    'teacher': teacher.state_dict() if teacher is not None else {},
                    'seen': self.seen, 'iters': self.learn.train_iter,
                    'skipped': list(guard.skipped) if guard is not None else []},
                   f'{self.out}/rank{rank_distrib()}.pt')


class WriteLog:
    """The files that this process opens for writing, or moves into place, inside `folder` (Python's audit events:
    whatever writes them, through Python's `open` or `os.replace`)."""

    def __init__(self, folder: str):
        self.folder, self.paths = os.path.realpath(folder) + os.sep, set()
        sys.addaudithook(self._hook)

    def _hook(self, event: str, args: tuple) -> None:
        if event == 'open' and isinstance(args[2], int) and args[2] & (os.O_WRONLY | os.O_RDWR):
            path = args[0]
        elif event == 'os.rename':  # os.rename and os.replace
            path = args[1]
        else:
            return
        if isinstance(path, (str, os.PathLike)) and os.path.realpath(path).startswith(self.folder):
            self.paths.add(os.path.relpath(os.path.realpath(path), self.folder))


if __name__ == '__main__':
    config, out, weights_dir = sys.argv[1:4]
    writes = WriteLog(out)
    cbs = [Record(weights_dir)]
    if len(sys.argv) > 4:  # RANK:ITERATION of a NaN loss
        rank, at = (int(v) for v in sys.argv[4].split(':'))
        cbs.append(Poison(at, rank))
    train(resolve_config(config, out=out), cbs=cbs)
    with open(f'{weights_dir}/rank{rank_distrib()}_writes.json', 'w') as f:
        json.dump(sorted(writes.paths), f)
    from dada_fastai.distributed import shutdown
    shutdown()
