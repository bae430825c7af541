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
        torch.save({'model': model.state_dict(), 'd': self.learn.dada.discriminators.state_dict(),
                    'seen': self.seen, 'iters': self.learn.train_iter},
                   f'{self.out}/rank{rank_distrib()}.pt')


if __name__ == '__main__':
    config, out, weights_dir = sys.argv[1:4]
    train(resolve_config(config, out=out), cbs=[Record(weights_dir)])
    from dada_fastai.distributed import shutdown
    shutdown()
