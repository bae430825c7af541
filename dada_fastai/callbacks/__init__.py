"""The callbacks that make a fastai Learner train DADA, one concern per module:

- `adversarial`: `DADATrainer`, the adversarial half of each iteration (target forward, fooling loss, the
  discriminators' losses and their optimizer);
- `loss_terms`: `TrainTerm`, a loss term of the training iterations as a column of the progress table;
- `schedule`: learning rates and budgets (`poly_decay`, `HeadLR`, `IterBudget`, `SetEpoch`);
- `batchnorm`: `FrozenBatchNorm` and `uses_batch_statistics`;
- `backend`: the CUDA backend settings (`CudaBackend`, `tf32`, `cudnn_autotuner`), contexts around fit and validation;
- `nonfinite`: `NonFiniteGuard`, what a NaN or infinite loss does;
- `mixed_precision`: `DeviceMixedPrecision`, fastai's mixed precision on any device;
- `progress`: `TableProgress` and `ThrottledProgress`, the progress bars and epoch table."""
from .adversarial import DADATrainer
from .backend import CudaBackend, cudnn_autotuner, tf32
from .batchnorm import FrozenBatchNorm, uses_batch_statistics
from .loss_terms import TrainTerm
from .mixed_precision import DeviceMixedPrecision
from .nonfinite import NonFiniteGuard, NonFiniteLoss
from .progress import TableProgress, ThrottledProgress, fit_number
from .schedule import HeadLR, IterBudget, SetEpoch, finding_lr, poly_decay

__all__ = ['TrainTerm', 'DADATrainer', 'HeadLR', 'IterBudget', 'SetEpoch', 'poly_decay', 'finding_lr', 'NonFiniteLoss',
           'NonFiniteGuard', 'uses_batch_statistics', 'CudaBackend', 'tf32', 'cudnn_autotuner', 'FrozenBatchNorm',
           'DeviceMixedPrecision', 'TableProgress', 'ThrottledProgress', 'fit_number']
