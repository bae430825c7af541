"""One process of the 2-process distributed test (run by `accelerate launch` from test_distributed.py):
trains from a config file and saves this rank's final weights and what it saw."""
import sys

import torch
from fastai.callback.core import Callback
from fastai.torch_core import rank_distrib

from dada_fastai.config import resolve_config
from dada_fastai.runs import train


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
        torch.save({'model': model.state_dict(), 'd': self.learn.dada.discriminators.state_dict(),
                    'seen': self.seen, 'iters': self.learn.train_iter,
                    'skipped': list(guard.skipped) if guard is not None else []},
                   f'{self.out}/rank{rank_distrib()}.pt')


class Poison(Callback):
    """A NaN loss in one process only (rank `rank`, iteration `at` counted from 0), as a bad batch would give."""
    order = 6  # after DADATrainer's after_loss

    def __init__(self, rank: int, at: int):
        self.rank, self.at = rank, at

    def after_loss(self):
        if self.training and self.train_iter == self.at and rank_distrib() == self.rank:
            self.learn.loss_grad = self.loss_grad * float('nan')
            self.learn.loss = self.loss * float('nan')


if __name__ == '__main__':
    config, out, weights_dir = sys.argv[1:4]
    cbs = [Record(weights_dir)]
    if len(sys.argv) > 4:  # RANK:ITERATION of a NaN loss
        rank, at = (int(v) for v in sys.argv[4].split(':'))
        cbs.append(Poison(rank, at))
    train(resolve_config(config, out=out), cbs=cbs)
    from dada_fastai.distributed import shutdown
    shutdown()
