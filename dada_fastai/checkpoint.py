"""Checkpoints that never lose a run: atomic writes, safe loading (no code execution), exact resume;
and the safe inference export (safetensors + JSON metadata)."""
from __future__ import annotations

import io
import json
import random
from pathlib import Path

import numpy as np
import torch
from fastai.callback.core import Callback

from .errors import CheckpointError
from .run_folder import EXPORT_FILE, LAST_CHECKPOINT, RunFolder
from .storage import atomic_write_bytes

__all__ = ['CheckpointError', 'atomic_write_bytes', 'training_state', 'save_checkpoint', 'load_checkpoint',
           'restore_training_state', 'Checkpointer', 'ResumeFrom', 'export_inference', 'save_export',
           'load_inference_file', 'CHECKPOINT_FORMAT', 'EXPORT_FORMAT', 'NETWORKS']

CHECKPOINT_FORMAT = 'dada-fastai-checkpoint-v1'
EXPORT_FORMAT = 'dada-fastai-export-v1'


def _rng_state() -> dict:
    np_state = np.random.get_state()
    state = {'torch': torch.get_rng_state(), 'numpy_keys': torch.from_numpy(np_state[1].astype(np.int64)),
             'numpy_pos': int(np_state[2]), 'python': list(random.getstate()[1]),
             'python_version': int(random.getstate()[0]),
             'python_gauss': random.getstate()[2]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state()  # this process's device (rank 0's when distributed)
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state['torch'])
    cuda = state.get('cuda') if torch.cuda.is_available() else None
    if isinstance(cuda, (list, tuple)):  # older checkpoints: every device's generator
        here = torch.cuda.current_device()
        cuda = cuda[here] if here < len(cuda) else None
    if cuda is not None:
        torch.cuda.set_rng_state(cuda)
    np.random.set_state(('MT19937', state['numpy_keys'].numpy().astype(np.uint32), state['numpy_pos'], 0, 0.))
    random.setstate((state['python_version'], tuple(state['python']), state['python_gauss']))


def training_state(learn, iteration: int, epoch: int, iter_in_epoch: int, config: dict | None = None,
                   scaler=None) -> dict:
    """Everything needed to continue a run exactly: weights, both optimizers, position, RNG states, and fp16's
    gradient scaler (`scaler`, default `learn.scaler`)."""
    model = getattr(learn.model, 'module', learn.model)  # unwrapped from DistributedDataParallel
    state = {'format': CHECKPOINT_FORMAT, 'model': model.state_dict(), 'iteration': iteration,
             'epoch': epoch, 'iter_in_epoch': iter_in_epoch, 'rng': _rng_state(),
             'config': json.dumps(config or learn.meta.config or {}, default=str),
             'meta': json.dumps(learn.meta.to_dict())}
    if learn.opt is not None:
        state['opt'] = learn.opt.state_dict()
    if hasattr(learn, 'dada'):
        state['dada'] = learn.dada.state_dict()
    if hasattr(learn, 'teacher'):  # self-training's mean teacher and its step, and its random draws
        state['teacher'] = learn.teacher.state_dict()
        state['self_training'] = learn.self_training.state_dict()
    scaler = scaler if scaler is not None else getattr(learn, 'scaler', None)
    if scaler is not None and scaler.is_enabled():  # fp16: the loss scale and its growth tracker
        state['scaler'] = scaler.state_dict()
    return state


def model_meta(learn) -> dict:
    """What is needed to rebuild the model for inference, as files hold it: `learn.meta.to_dict()`."""
    return learn.meta.to_dict()


def _plain(obj):
    """NumPy scalars and arrays (fastai's schedules put them in optimizer hyper-parameters) -> Python
    numbers and tensors, so that the checkpoint loads with `weights_only=True`."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj)
    return obj


def save_checkpoint(learn, path: str | Path, iteration: int, epoch: int = 0, iter_in_epoch: int = 0,
                    scaler=None, keep: str | Path | None = None) -> Path:
    """Write a training checkpoint atomically (the previous file stays usable if anything fails; with `keep`, it
    also becomes that file once the new one is complete)."""
    buf = io.BytesIO()
    torch.save(_plain(training_state(learn, iteration, epoch, iter_in_epoch, scaler=scaler)), buf)
    return atomic_write_bytes(path, buf.getvalue(), keep=keep)


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint without executing code from it; clear errors for missing, empty, truncated or
    unsafe files."""
    path = Path(path)
    if path.is_dir():
        path = RunFolder(path).last
    if not path.is_file():
        raise CheckpointError(f'checkpoint not found: {path}')
    if path.stat().st_size == 0:
        raise CheckpointError(f'checkpoint is empty (0 bytes): {path}; use an earlier checkpoint of the run')
    try:
        state = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if 'weights_only' in str(e) or 'Unsupported global' in str(e):
            raise CheckpointError(f'refusing {path}: loading it would execute pickled code ({msg[:160]}); '
                                  'only checkpoints of tensors and plain values are accepted') from None
        raise CheckpointError(f'cannot read checkpoint {path} (truncated or not a checkpoint): {msg[:160]}') from None
    if not isinstance(state, dict) or state.get('format') != CHECKPOINT_FORMAT:
        raise CheckpointError(f'{path} is not a dada-fastai training checkpoint')
    kinds = {'model': dict, 'iteration': int, 'epoch': int, 'iter_in_epoch': int, 'rng': dict, 'meta': str}
    for key, kind in kinds.items():
        if not isinstance(state.get(key), kind):
            what = 'lacks' if key not in state else 'has a damaged'
            raise CheckpointError(f'{path} {what} {key!r}: a damaged checkpoint; use an earlier checkpoint of the run '
                                  '(prev.pth)')
    return state


def restore_training_state(learn, state: dict, path: str | Path = 'checkpoint') -> None:
    """Load weights, discriminators and optimizer states of `state` into `learn` (strict, clear errors)."""
    try:
        learn.model.load_state_dict(state['model'])
    except RuntimeError as e:
        first = str(e).splitlines()[0] if str(e) else ''
        detail = ' '.join(str(e).split())[:300]
        raise CheckpointError(f'{path} does not fit this model ({first} {detail})') from None
    if 'dada' in state and hasattr(learn, 'dada'):
        try:
            learn.dada.load_state_dict(state['dada'])
        except (RuntimeError, KeyError) as e:
            raise CheckpointError(f'{path}: discriminators do not fit this method ({" ".join(str(e).split())[:200]})') from None
    if 'teacher' in state and hasattr(learn, 'teacher'):
        try:
            learn.teacher.load_state_dict(state['teacher'])
            if 'self_training' in state:
                learn.self_training.load_state_dict(state['self_training'])
        except (RuntimeError, KeyError, TypeError) as e:
            raise CheckpointError(f'{path}: its teacher does not fit this model ({" ".join(str(e).split())[:200]})') from None
    try:
        if state.get('opt') is not None:
            if learn.opt is None:
                learn.create_opt()
            learn.opt.load_state_dict(state['opt'])
        _set_rng_state(state['rng'])
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as e:
        raise CheckpointError(f'{path}: optimizer or random state does not fit this run ({type(e).__name__}: '
                              f'{" ".join(str(e).split())[:200]}); a damaged checkpoint') from None


class Checkpointer(Callback):
    """Save `last.pth` every `every` iterations and at the end of training (atomically), keeping the
    previous one as `prev.pth`; only the main process writes. `saved_at` is the iteration of the last checkpoint
    written (or resumed from)."""
    order = 90  # after the discriminator step

    def __init__(self, run_dir: str | Path, every: int = 2000):
        self.folder, self.every = RunFolder(run_dir), every
        self.rotate = True  # the current last.pth becomes prev.pth at the next save (not when it is damaged)
        self.saved_at = None

    def _save(self):
        from fastai.torch_core import num_distrib, rank_distrib
        if rank_distrib() != 0:
            return
        last = self.folder.last
        keep, self.rotate = (self.folder.prev if self.rotate else None), True
        inner = getattr(self.dl, 'dl', self.dl)  # the paired DataLoader, also inside fastai's DistributedDL
        # batches of the epoch done, counted over all processes
        epoch, done = self.epoch, getattr(inner, 'skip', 0) + (self.iter + 1) * max(num_distrib(), 1)
        if self.iter + 1 >= self.n_iter:
            epoch, done = epoch + 1, 0  # the epoch is complete: resume at the next one
        save_checkpoint(self.learn, last, self.train_iter, epoch, done, scaler=self.kept_scaler, keep=keep)

    def before_fit(self):
        self.kept_scaler = None

    def after_batch(self):
        # fastai's mixed precision drops its scaler before this callback's after_fit: keep a reference
        self.kept_scaler = getattr(self.learn, 'scaler', None) or self.kept_scaler
        if self.training and self.every and self.train_iter % self.every == 0:
            guard = getattr(self.learn, 'non_finite_guard', None)
            if guard is not None:
                guard.flush()  # never save weights that a non-finite loss has reached
            self._save()
            self.saved_at = self.train_iter

    def after_fit(self):
        if self.saved_at != self.train_iter and self.train_iter > 0:
            self._save()
            self.saved_at = self.train_iter


class ResumeFrom(Callback):
    """Continue a run from a checkpoint state: the iteration counter, the epoch and the position inside
    it (the paired DataLoader skips the batches already seen), and fp16's loss scale."""
    order = -9  # right after TrainEvalCallback resets the counters

    def __init__(self, state: dict):
        self.state = state

    def before_fit(self):
        self.learn.train_iter = self.state['iteration']
        self.learn.pct_train = 0.
        self.scaler_pending = 'scaler' in self.state

    def before_train(self):
        scaler = getattr(self.learn, 'scaler', None)  # made by the mixed-precision callback's before_fit
        if self.scaler_pending and scaler is not None and scaler.is_enabled():
            scaler.load_state_dict(self.state['scaler'])
        self.scaler_pending = False
        inner = getattr(self.dl, 'dl', self.dl)
        if self.epoch == self.state['epoch'] and hasattr(inner, 'skip'):
            inner.skip = self.state['iter_in_epoch']

    def after_train(self):
        inner = getattr(self.dl, 'dl', self.dl)
        if hasattr(inner, 'skip'):
            inner.skip = 0


def export_inference(learn, path: str | Path) -> Path:
    """Export the segmenter for inference as safetensors with its metadata (no pickle)."""
    return save_export(learn.model, learn.meta, path)


def save_export(model: torch.nn.Module, meta, path: str | Path) -> Path:
    """Write `model`'s weights and its `meta.RunMeta` as a safetensors export (atomically)."""
    from safetensors.torch import save
    info = {'format': EXPORT_FORMAT, 'meta': json.dumps(meta.to_dict())}
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return atomic_write_bytes(path, save(tensors, metadata=info))


NETWORKS = ('student', 'teacher')  # what a self-training run's files hold; exports hold the student


def load_inference_file(path: str | Path, network: str = 'student') -> tuple[dict, dict]:
    """(state dict, metadata) of an exported model, or of a training checkpoint. `network='teacher'` reads a
    self-training run's mean teacher, which its checkpoints hold (exports hold the student, the network a run
    evaluates and exports)."""
    if network not in NETWORKS:
        raise CheckpointError(f'unknown network {network!r}; valid: {", ".join(NETWORKS)}')
    path = Path(path)
    if path.is_dir():
        found = RunFolder(path).last if network == 'teacher' else RunFolder(path).model_file()
        if found is None or not found.is_file():
            raise CheckpointError(f'no {LAST_CHECKPOINT} in {path}' if network == 'teacher' else
                                  f'no {EXPORT_FILE} or {LAST_CHECKPOINT} in {path}')
        path = found
    if path.suffix == '.safetensors':
        if network == 'teacher':
            raise CheckpointError(f'{path} is an export, which holds the student alone; for the teacher give the '
                                  f'run folder or its {LAST_CHECKPOINT}')
        from safetensors import safe_open
        if not path.is_file():
            raise CheckpointError(f'model file not found: {path}')
        try:
            with safe_open(str(path), 'pt') as f:
                meta = f.metadata() or {}
                sd = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:
            raise CheckpointError(f'cannot read {path} (truncated or not a safetensors file): {e}') from None
        if meta.get('format') != EXPORT_FORMAT:
            raise CheckpointError(f'{path} is not a dada-fastai export (no metadata)')
        return sd, _model_meta(meta.get('meta'), path)
    state = load_checkpoint(path)
    if network == 'teacher':
        teacher = state.get('teacher')
        if not isinstance(teacher, dict) or not isinstance(teacher.get('model'), dict):
            raise CheckpointError(f'{path} holds no teacher: not a self-training run (dacs, dada_st), or one stopped '
                                  'before its first iteration')
        return teacher['model'], _model_meta(state['meta'], path)
    return state['model'], _model_meta(state['meta'], path)


_META_KEYS = {'arch': str, 'n_classes': int, 'depth_block': bool, 'feature_fusion': bool}


def _model_meta(text, path: Path) -> dict:
    """A model file's metadata (JSON) checked for what rebuilding the model needs."""
    try:
        meta = json.loads(text)
    except (TypeError, ValueError):
        meta = None
    if not isinstance(meta, dict):
        raise CheckpointError(f'{path}: its model metadata cannot be read; a damaged file')
    for key, kind in _META_KEYS.items():
        if not isinstance(meta.get(key), kind):
            raise CheckpointError(f'{path}: its model metadata lacks {key!r} (or it is damaged): a damaged file')
    size = meta.get('target_size')
    if size is not None and not (isinstance(size, list) and len(size) == 2 and all(
            type(s) is int and s > 0 for s in size)) or meta.get('fit', 'stretch') not in ('stretch', 'pad'):
        raise CheckpointError(f'{path}: its model metadata has a damaged target size or fit: a damaged file')
    return meta
