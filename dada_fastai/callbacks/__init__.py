"""The callbacks that make a fastai Learner train DADA, one concern per module:

- `adversarial`: `DADATrainer`, the adversarial half of each iteration (target forward, fooling loss, the
  discriminators' losses and their optimizer);
- `loss_terms`: `TrainTerm`, a loss term of the training iterations as a column of the progress table, and
  `TermMeter`, their averages between two rows of a log;
- `schedule`: learning rates and budgets (`poly_decay`, `HeadLR`, `IterBudget`, `SetEpoch`, `learning_rates`);
- `batchnorm`: `FrozenBatchNorm` and `uses_batch_statistics`;
- `backend`: the CUDA backend settings (`CudaBackend`, `tf32`, `cudnn_autotuner`), contexts around fit and validation;
- `nonfinite`: `NonFiniteGuard`, what a NaN or infinite loss does;
- `mixed_precision`: `DeviceMixedPrecision`, fastai's mixed precision on any device;
- `progress`: `default_intervals`, how often a run reports; `TableProgress` and `ThrottledProgress`, the progress
  bars and epoch table, and `LineProgress`, plain lines for logs written to files;
- `teacher`, `self_training`: `MeanTeacher` and `SelfTraining`, self-training on mixed images (DACS), and
  `PseudoLabelQuality` (`pseudo_label_reports`), the teacher's pseudo-labels measured on the labelled target
  validation set;
- `tensorboard`, `wandb`: the optional loggers' sinks (imported only when `--log` asks for them)."""
from .adversarial import DADATrainer
from .backend import CudaBackend, cudnn_autotuner, tf32
from .batchnorm import FrozenBatchNorm, uses_batch_statistics
from .loss_terms import TermMeter, TrainTerm, batch_terms, validation_values
from .mixed_precision import DeviceMixedPrecision, cpu_has_native_bf16, default_precision
from .nonfinite import NonFiniteGuard, NonFiniteLoss
from .progress import (LineProgress, TableProgress, ThrottledProgress, default_intervals, fit_number, nice_interval,
                       progress_mode)
from .self_training import PseudoLabelQuality, SelfTraining, pseudo_label_reports, self_training_terms
from .teacher import MeanTeacher
from .schedule import HeadLR, IterBudget, SetEpoch, finding_lr, learning_rates, poly_decay

__all__ = ['TrainTerm', 'TermMeter', 'batch_terms', 'validation_values', 'DADATrainer', 'HeadLR', 'IterBudget',
           'SetEpoch', 'poly_decay', 'finding_lr', 'learning_rates', 'NonFiniteLoss', 'NonFiniteGuard',
           'uses_batch_statistics', 'CudaBackend', 'tf32', 'cudnn_autotuner', 'FrozenBatchNorm', 'DeviceMixedPrecision',
           'cpu_has_native_bf16', 'default_precision',
           'TableProgress', 'ThrottledProgress', 'LineProgress', 'progress_mode', 'fit_number', 'nice_interval',
           'default_intervals', 'MeanTeacher', 'SelfTraining', 'PseudoLabelQuality', 'pseudo_label_reports',
           'self_training_terms']
