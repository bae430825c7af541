"""Training runs from a configuration: the run folder, the data and learner it builds, training with
checkpoints, resume, the final evaluation and pictures. The Python side of `dada-fastai train`."""
from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import socket
import time
import warnings
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import numpy as np
import torch

from .config import ConfigError, TrainConfig, resolve_config, warm_start_recipe
from .data import dada_dataloaders
from .distributed import resolve_device
from .preprocess import parse_size
from .errors import DiskFullError, RunError, UserError
from .losses import Lambdas
from .run_folder import RunFolder

__all__ = ['RunError', 'resolve_device', 'seed_everything', 'new_run_dir', 'build_dataloaders', 'build_learner',
           'train', 'resume', 'RunResult', 'epoch_length', 'default_workers', 'build_run_learner', 'resolve_precision',
           'warm_start_key', 'warm_start_weights', 'tracked_run']


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch; optionally ask torch for deterministic algorithms."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def new_run_dir(out: str | None, method: str) -> Path:
    """The path of a fresh run folder: `out`, or ./runs/<time>-<method>. Never a folder that holds a run.
    The caller creates it once everything that can fail early has been checked."""
    path = Path(out) if out else Path('runs') / f'{time.strftime("%Y%m%d-%H%M%S")}-{method}'
    if path.exists() and RunFolder(path).holds_run():
        raise RunError(f'run folder {path} already holds a run; continue it with --resume {path} or choose '
                       'another --out')
    if path.exists() and not path.is_dir():
        raise RunError(f'--out {path} is a file, not a folder')
    return path


def _norm_for(cfg: TrainConfig) -> str:
    from .model import REFERENCE_ARCH
    if cfg.norm != 'auto':
        return cfg.norm
    if cfg.arch == REFERENCE_ARCH:
        return 'reference'
    return 'timm' if cfg.pretrained or cfg.weights else 'imagenet'


def _specs(cfg: TrainConfig) -> tuple[str, str]:
    if cfg.source is not None:
        return cfg.source, cfg.target
    from .toy import ToyConfig, toy_specs
    return toy_specs(cfg=ToyConfig(**(cfg.toy or {})))


def epoch_length(iters: int, natural: int) -> int:
    """Iterations per epoch: at most `natural` (one pass over the source), dividing `iters` when a divisor
    is close, so that the run ends on a complete epoch (and its validation)."""
    k = max(-(-iters // max(natural, 1)), 1)
    for n_epochs in range(k, 2 * k + 1):
        if iters % n_epochs == 0:
            return iters // n_epochs
    return -(-iters // k)


def default_workers(device: torch.device | None) -> int:
    """DataLoader workers when none are asked for: 0 on CPU (training uses the cores); on a GPU up to 8 per
    process, a core left for the training loop. Loading is decode-bound: about 0.5 core-seconds per pair at
    the paper's sizes (`benchmarks/README.md`), so the reference's 4 workers would feed at most ~8 pairs/s."""
    if device is None or device.type != 'cuda':
        return 0
    from fastai.torch_core import num_distrib
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else (os.cpu_count() or 1)
    local = int(os.environ.get('LOCAL_WORLD_SIZE', 0)) or max(num_distrib(), 1)  # processes on this machine
    return max(1, min(8, cores // local - 1))


def build_dataloaders(cfg: TrainConfig, device: torch.device | None = None):
    """The paired DataLoaders a configuration asks for."""
    source, target = _specs(cfg)
    workers = cfg.workers if cfg.workers is not None else default_workers(device)
    dls = dada_dataloaders(source, target, n_classes=cfg.classes, source_size=parse_size(cfg.source_size),
                           target_size=parse_size(cfg.target_size), bs=cfg.bs, norm=_norm_for(cfg), arch=cfg.arch,
                           augment=cfg.augment, num_workers=workers, seed=cfg.seed, device=device, val_max=cfg.val_max)
    dls.train.n = (cfg.eval_every or epoch_length(cfg.iters, len(dls.train))) * cfg.bs
    return dls


def build_learner(cfg: TrainConfig, dls, run_dir: Path | None = None, cbs=None, stage: str = 'training'):
    """The DADA learner a configuration asks for, with checkpoints, history and logs in `run_dir`; progress lines
    (when the output is a file) name the `stage`."""
    from .checkpoint import Checkpointer
    from .learner import OPTIMIZERS, dada_learner
    from .model import REFERENCE_ARCH
    kwargs = {}
    if cfg.arch == REFERENCE_ARCH and cfg.layers:
        kwargs['layers'] = tuple(cfg.layers)
    cbs = ([Checkpointer(run_dir, cfg.checkpoint_every)] if run_dir is not None else []) + list(cbs or [])
    learn = dada_learner(dls, cfg.method, arch=cfg.arch, pretrained=cfg.pretrained and not cfg.weights,
                         weights=cfg.weights, lambdas=Lambdas(cfg.lambda_seg, cfg.lambda_depth, cfg.lambda_adv),
                         lr=cfg.lr, head_lr_mult=cfg.head_lr_mult, wd=cfg.wd,
                         opt_func=partial(OPTIMIZERS[cfg.opt], wd=cfg.wd), d_lr=cfg.d_lr, ndf=cfg.ndf, cbs=cbs,
                         path=run_dir or '.',
                         model_dir='.', backbone_kwargs=kwargs, on_nan=cfg.on_nan, mode=cfg.mode,
                         precision=cfg.precision, compile=cfg.compile, bn=cfg.bn,
                         depth_scale=cfg.depth_scale, fusion_bias=cfg.fusion_bias, config=cfg.to_dict(),
                         self_training=dict(alpha=cfg.st_alpha, threshold=cfg.st_threshold,
                                            confidence=cfg.st_confidence, mix=cfg.st_mix,
                                            lambda_st=cfg.lambda_st, source_weight=cfg.st_source_weight,
                                            lambda_depth=cfg.lambda_st_depth, start=cfg.st_start,
                                            augment=cfg.st_augment))
    from .history import add_run_logging
    add_run_logging(learn, cfg, run_dir, stage)  # history.csv, curves.png, --log loggers; plain progress lines in files
    return learn


def resolve_precision(cfg: TrainConfig, device: torch.device) -> None:
    """Fill in fast mode's precision when none was asked for (`learner.default_precision`: bf16 on GPU and on CPUs
    with native bf16), so that the configuration saved, and a warm start's key, name the one that runs."""
    if cfg.mode == 'fast' and cfg.precision is None:
        from .learner import default_precision
        cfg.precision = default_precision(device)


def _precision_words(cfg: TrainConfig, device: torch.device) -> str:
    words = {'bf16': 'bf16 autocast', 'fp16': 'fp16 autocast with a gradient scaler', 'fp32': 'float32'}[cfg.precision]
    if cfg.precision == 'fp32' and device.type == 'cpu':
        from .learner import cpu_has_native_bf16
        words += '' if cpu_has_native_bf16() else ' (this processor has no native bf16)'
    return f'fast mode: {words} on {device}'


class RunResult(dict):
    """What a run produced: {'run_dir', 'iters', 'miou', 'miou13', 'per_class', 'seconds'}."""


def _finish(learn, cfg: TrainConfig, run_dir: Path, started: float, console=None) -> RunResult:
    from .checkpoint import export_inference
    from .distributed import is_main_process
    folder = RunFolder(run_dir)
    iters = int(learn.train_iter)
    res = learn.evaluate()
    out = RunResult(run_dir=str(run_dir), iters=iters, seconds=round(time.time() - started, 1), **res)
    if not is_main_process():
        return out
    export_inference(learn, folder.export)
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
        learn.show_results(max_n=4)
        plt.savefig(folder.picture, dpi=80, bbox_inches='tight')
        plt.close('all')
    except Exception as e:  # pictures must never cost a finished run
        (console.print if console else print)(f'could not draw {folder.picture.name}: {e}')
    folder.write_results(out)
    return out


def _fit(learn, cfg: TrainConfig, start: dict | None = None):
    from .checkpoint import ResumeFrom
    cbs = [ResumeFrom(start)] if start else []
    start_epoch = start['epoch'] if start else 0
    learn.fit_iters(cfg.iters, lr=cfg.lr, schedule=cfg.schedule, cbs=cbs, start_epoch=start_epoch)


def _start_distributed(device: str = 'auto') -> None:
    """Join the process group of an accelerate launch (before anything is shared between processes); CPU
    processes (no GPU, or --device cpu) use gloo."""
    from fastai.torch_core import num_distrib
    if num_distrib() > 1:
        from accelerate import PartialState
        PartialState(cpu=device == 'cpu' or not torch.cuda.is_available())


def _main_decides(fn, *args):
    """Run `fn` on rank 0 only and give its result (or its error) to every process."""
    from .distributed import broadcast_object, is_main_process
    result = None
    if is_main_process():
        try:
            result = ('ok', fn(*args))
        except UserError as e:
            result = ('error', e)
    kind, value = broadcast_object(result)
    if kind == 'error':
        raise value
    return value


def build_run_learner(cfg: TrainConfig, run_dir: Path | None = None, cbs=None, console=None, init: bool = True,
                      stage: str = 'training'):
    """Seed, then build the DataLoaders and the learner of a run on this process's device (with `init`, from
    the warm start when the configuration asks for one; a resumed run loads its checkpoint instead)."""
    device = resolve_device(cfg.device)
    start = _init_weights(cfg) if init and cfg.init else None  # a finished run's model, checked before anything runs
    warm = warm_start_weights(cfg, console) if init and cfg.warm_start and start is None else None
    seed_everything(cfg.seed, cfg.deterministic)
    learn = build_learner(cfg, build_dataloaders(cfg, device), run_dir, cbs, stage)
    if warm is not None:
        learn.model.load_state_dict(torch.load(warm, map_location='cpu', weights_only=True))
    if start is not None:
        try:
            learn.model.load_state_dict(start)
        except RuntimeError as e:  # another backbone size (layers), say
            from .checkpoint import CheckpointError
            raise CheckpointError(f'--init {cfg.init}: its weights do not fit this network '
                                  f'({" ".join(str(e).split())[:200]})') from None
    return learn


def _init_weights(cfg: TrainConfig) -> dict:
    """The segmenter of `cfg.init` (a run folder, checkpoint or export), refused in one line unless it is the network
    `cfg` trains: the same backbone, classes and parts (depth block, fusion)."""
    from .checkpoint import CheckpointError, load_inference_file
    from .methods import method_config
    sd, meta = load_inference_file(cfg.init)
    net = method_config(cfg.method)

    def describe(depth, fusion):
        return ("DADA's network (depth block and fusion)" if depth and fusion else 'a network with the depth block but '
                'no fusion' if depth else 'a plain DeepLab-v2 network (no depth block)')
    theirs, ours = (meta['depth_block'], meta['feature_fusion']), (net.depth_block, net.feature_fusion)
    if theirs != ours:
        hint = 'dacs' if not meta['depth_block'] else 'dada_st'
        raise CheckpointError(f'--init {cfg.init}: its model is {describe(*theirs)}, but --method {cfg.method} trains '
                              f'{describe(*ours)}; start from a run of that network, or use a method of this one '
                              f'(e.g. --method {hint})')
    for name, want in (('arch', cfg.arch), ('n_classes', cfg.classes)):
        if meta[name] != want:
            flag = '--arch' if name == 'arch' else '--classes'
            raise CheckpointError(f'--init {cfg.init}: its model has {name} {meta[name]!r}, but this run has {flag} '
                                  f'{want!r}; give the same {flag}')
    return sd


WARM_START_SEED = 0  # one warm start per recipe, whatever the run's seed: it stands in for a published model
WARM_START_VERSION = 2  # bumped whenever the network's initialisation or the stage changes, so that older caches
# are not reused (2: from scratch, the backbone's frozen BatchNorm scales start at one, not at timm's zero)


def warm_start_key(cfg: TrainConfig) -> dict:
    """What a warm start depends on: the source, the sizes, the source-only recipe and the segmenter's parts
    (not the run's seed, adaptation map or adversarial settings, so that every seed of a recipe and every
    method with the same network share it)."""
    from .methods import method_config
    keep = ('source', 'classes', 'arch', 'layers', 'pretrained', 'weights', 'source_size', 'target_size', 'bs',
            'lr', 'wd', 'schedule', 'lambda_seg', 'lambda_depth', 'depth_scale', 'fusion_bias', 'norm', 'augment',
            'mode', 'precision', 'bn', 'toy', 'warm_start')
    key = {k: getattr(cfg, k) for k in keep}
    key['version'] = WARM_START_VERSION
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    for k in ('opt', 'head_lr_mult'):  # added later: at the paper's default, the key of the caches written before
        if getattr(cfg, k) != defaults[k]:
            key[k] = getattr(cfg, k)
    recipe = warm_start_recipe(cfg.warm_start_recipe)
    m = method_config(cfg.method)
    key['network'] = {'depth_block': m.depth_block, 'feature_fusion': m.feature_fusion}
    if not m.depth_block:  # a network without the depth block learns nothing from depth
        del key['lambda_depth'], key['depth_scale'], key['fusion_bias']
        recipe.pop('lambda_depth', None)
    if recipe:  # none, or the depth weight alone on a plain network: the key of caches written before recipes
        key['recipe'] = recipe
    if cfg.source is None:  # the toy pair's folder name hashes all its settings
        from .toy import ToyConfig, config_key
        key['source'] = 'toy:' + config_key(ToyConfig(**(cfg.toy or {})))
        del key['toy']
    return key


def warm_start_weights(cfg: TrainConfig, console=None) -> Path:
    """The segmenter after a source-only stage of `cfg.warm_start` iterations: the run's network (depth block
    and fusion as its method has them, no discriminator) trained on the run's source with the run's recipe
    (labels, and depth where the network predicts it; `warm_start_recipe` may give it its own optimizer, rates,
    batch size, schedule or depth weight), seed `WARM_START_SEED`. Trained once and cached in the package's cache
    (`storage.cache_dir('warm_start')`): every seed, and every method with the same network, starts from it, as the
    paper's methods all start from one ImageNet backbone."""
    import hashlib
    from .methods import method_config
    from .storage import cache_dir
    key = warm_start_key(cfg)
    digest = hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]
    net = 'depth' if key['network']['depth_block'] else 'plain'
    path = cache_dir('warm_start', f'{cfg.arch}_{net}_{cfg.warm_start}it_{digest}.pth')
    if path.is_file():
        return path
    from .distributed import is_main_process
    if console is not None and is_main_process():
        console.print(f'warm start: {cfg.warm_start} source-only iterations, once for this recipe '
                      f'(cached in {path.parent})')
    m = method_config(cfg.method)
    stage = dataclasses.replace(cfg, method=m.network, iters=cfg.warm_start,
                                warm_start=0, warm_start_recipe=None, seed=WARM_START_SEED, checkpoint_every=0,
                                eval_every=cfg.warm_start, out=None, **warm_start_recipe(cfg.warm_start_recipe))  # validates once
    learn = build_run_learner(stage, None, stage='warm start')  # its progress reported as the main stage's
    _fit(learn, stage)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f'.{path.name}.{os.getpid()}.tmp')
    torch.save({k: v.detach().cpu().contiguous() for k, v in learn.model.state_dict().items()}, tmp)
    os.replace(tmp, path)  # complete or absent
    return path


def train(cfg: TrainConfig | None = None, console=None, cbs=None, **options) -> RunResult:
    """Train a run from `cfg` (or options resolved like the command line's), checkpointing into its run
    folder; returns the final target-validation results. `cbs`: extra fastai callbacks. Under
    `accelerate launch` every process trains its share and rank 0 writes the files."""
    from .distributed import barrier, distributed_training, is_main_process
    cfg = cfg or resolve_config(options.pop('config', None), **options)
    _start_distributed(cfg.device)
    device = resolve_device(cfg.device)  # a missing GPU fails before anything else
    resolve_precision(cfg, device)  # recorded in config.yaml: a resume runs the same
    if console is not None and cfg.mode == 'fast':
        console.print(_precision_words(cfg, device))
    run_dir = _main_decides(new_run_dir, cfg.out, cfg.method)
    cfg.out = str(run_dir)
    learn = build_run_learner(cfg, run_dir, cbs, console)  # bad data fails here, before the run folder exists
    if is_main_process():
        RunFolder(run_dir).write_config(cfg.to_dict())
    barrier()
    started = time.time()
    with tracked_run(run_dir, learn, cfg.iters):  # status.json: running, then finished, failed or stopped
        with distributed_training(learn):
            _fit(learn, cfg)
        return _finish(learn, cfg, run_dir, started, console)


def resume(run_dir: str | Path, console=None, iters: int | None = None, cbs=None, **options) -> RunResult:
    """Continue the run in `run_dir` from its last checkpoint, exactly where it stopped (from `prev.pth`, with a
    warning, when `last.pth` is damaged). `iters` and `options` (command-line names) change what may change on
    resume (`config.Option.on_resume`: how long the run trains and how it is watched); any other option with a value
    other than the run's is refused, never ignored. Changed options are saved in the run's config.yaml."""
    from .checkpoint import restore_training_state
    run_dir = Path(run_dir)
    cfg, state, path = _resume_state(run_dir, {'iters': iters, **options}, console)
    _start_distributed(cfg.device)
    learn = build_run_learner(cfg, run_dir, cbs, init=False)  # the checkpoint holds the weights
    learn.create_opt()
    restore_training_state(learn, state, path)
    folder = RunFolder(run_dir)
    learn.checkpointer.saved_at = state['iteration']
    if path != folder.last:  # last.pth is damaged: the next checkpoint replaces it, prev.pth stays as it is
        learn.checkpointer.rotate = False
    from .distributed import is_main_process
    if is_main_process() and cfg.to_dict() != folder.load_config():
        folder.write_config(cfg.to_dict())
    started = time.time()
    with tracked_run(run_dir, learn, cfg.iters):
        if state['iteration'] < cfg.iters:
            from .distributed import distributed_training
            with distributed_training(learn):
                _fit(learn, cfg, state)
        else:
            learn.train_iter = state['iteration']
        return _finish(learn, cfg, run_dir, started, console)


def _resume_state(run_dir: Path, options: dict, console=None) -> tuple[TrainConfig, dict, Path]:
    """(the configuration to continue with, the checkpoint's state, the checkpoint's path): the run's config.yaml
    checked as a preset and against its checkpoint, with the options that may change on resume applied."""
    from dataclasses import fields
    from .checkpoint import CheckpointError, load_checkpoint
    from .config import check_config, check_option, flag, train_options
    specs = train_options()
    folder = RunFolder(run_dir)
    saved = {**folder.load_config(), 'out': str(run_dir)}  # the folder may have moved since
    where = f' in {folder.config}'
    bad = sorted(set(saved) - set(specs))
    if bad:
        raise ConfigError(f'unknown option {bad[0]!r}{where}; a damaged or foreign config.yaml (restore it)')
    cfg = TrainConfig(**{k: check_option(k, *specs[k], v, where) for k, v in saved.items()})
    check_config(cfg, where)
    given = {k.replace('-', '_'): v for k, v in options.items() if v is not None}
    unknown = sorted(set(given) - set(specs))
    if unknown:
        raise ConfigError(f'unknown option {unknown[0]!r}')
    for name, value in given.items():
        value = check_option(flag(name), *specs[name], value)
        if specs[name][1].on_resume:
            setattr(cfg, name, value)
        elif value != getattr(cfg, name) and name != 'out':
            may = ', '.join(flag(k) for k, (_, opt) in specs.items() if opt.on_resume)
            raise ConfigError(f'{flag(name)} {value} cannot change when resuming {run_dir} (the run has '
                              f'{getattr(cfg, name)!r}); on resume only {may} may change; for another recipe start a '
                              f'new run: --config {folder.config} {flag(name)} {value}')
    last, prev = folder.last, folder.prev
    try:
        state, path = load_checkpoint(last), last
    except CheckpointError as damaged:
        if not prev.is_file() or not last.exists():
            raise
        try:
            state, path = load_checkpoint(prev), prev
        except CheckpointError as e:
            raise CheckpointError(f'both checkpoints of {run_dir} are damaged: {last} ({damaged}) and {prev} ({e})') from None
        warnings.warn(f'{last} is damaged ({damaged}); resuming from {prev} (iteration {state["iteration"]})')
        if console is not None:
            console.print(f'[yellow]warning:[/] {last} is damaged; resuming from {prev} '
                          f'(iteration {state["iteration"]})', highlight=False)
    _same_run(cfg, state, path, {f.name for f in fields(TrainConfig) if specs[f.name][1].on_resume} | {'out'}, set(saved))
    return cfg, state, path


def _same_run(cfg: TrainConfig, state: dict, path: Path, free: set[str], saved: set[str]) -> None:
    """Raise CheckpointError when the checkpoint was written by a run with another recipe than config.yaml's (a
    config.yaml edited, damaged, or a checkpoint copied from another run), or config.yaml lacks an option the
    checkpoint's copy has (`saved`: the options config.yaml holds)."""
    from .checkpoint import CheckpointError
    try:
        theirs = json.loads(state.get('config') or '{}')
    except (TypeError, ValueError):
        raise CheckpointError(f'{path}: its copy of the run configuration cannot be read; a damaged checkpoint') from None
    ours = json.loads(json.dumps(cfg.to_dict(), default=str))
    lacking = sorted(set(theirs) & set(ours) - saved) if isinstance(theirs, dict) else []
    if lacking:
        raise CheckpointError(f'{RunFolder(path.parent).config} lacks {lacking[0]!r}, which {path} has; a damaged '
                              'config.yaml: restore it')
    for name, value in theirs.items() if isinstance(theirs, dict) else ():
        if name in ours and name not in free and ours[name] != value:
            raise CheckpointError(f'{path} was written by a run with {name} {value!r} but '
                                  f'{RunFolder(path.parent).config} says {ours[name]!r}; restore config.yaml or give '
                                  'the matching checkpoint')


# ---------------------------------------------------------------------------------------------------------
# The run's state
# ---------------------------------------------------------------------------------------------------------
def _one_line(e: BaseException, named: bool = True) -> str:
    """The error's first line (without what fastai's callbacks wrap around it), after its type's name."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and not ln.startswith('Exception occured in')]
    if not named:
        return lines[0] if lines else type(e).__name__
    return f'{type(e).__name__}: {lines[0]}' if lines else type(e).__name__


def _stop_on_sigterm():
    """Make SIGTERM (a batch scheduler's stop, `kill`) interrupt training as Ctrl-C does, so that the run is
    recorded as stopped and its loggers closed; returns the handler to restore, None when another one was set
    (or outside the main thread)."""
    import threading
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        return None

    def _interrupt(signum, frame):
        raise KeyboardInterrupt('SIGTERM')

    signal.signal(signal.SIGTERM, _interrupt)
    return signal.SIG_DFL


def _iteration(learn) -> int:
    """The run's last training iteration (`train_iter` is reset by fastai's `validate`)."""
    it = getattr(getattr(learn, 'history', None), 'iteration', None)
    return int(it if it is not None else getattr(learn, 'train_iter', 0) or 0)


def _what_survives(learn, folder: RunFolder) -> str:
    """What a user who runs out of disk space keeps, and how to go on."""
    saved = getattr(getattr(learn, 'checkpointer', None), 'saved_at', None)
    if saved:
        return (f'the checkpoint of iteration {saved} ({folder.last}) is intact: free some space, then '
                f'`dada-fastai train --resume {folder.path}` continues from it')
    return 'no checkpoint of this run was written yet: free some space and start it again in a new folder'


def _write_status(folder: RunFolder, status: dict, failing: bool = False) -> None:
    """Record the run's state; while a run fails, a status that cannot be written (a full disk) is left as it
    was rather than hiding the failure."""
    try:
        folder.write_status(status)
    except OSError:
        if not failing:
            raise


@contextmanager
def tracked_run(run_dir: str | Path, learn, iters: int):
    """Record in `status.json` that the run in `run_dir` is running (process id, host), then how it ended:
    'finished', 'failed' (with the error's line) or 'stopped' (interrupted); the seconds spent across
    sessions; and close the loggers. A full disk ends the run in one line that says which checkpoint survives and
    that `--resume` continues from it. Main process only; the other processes just run the block."""
    from .distributed import is_main_process
    from .history import close_loggers
    folder = RunFolder(run_dir)
    if not is_main_process():
        yield
        return
    prev = folder.read_status() or {}
    now = time.time()
    status = {'state': 'running', 'iter': int(getattr(learn, 'train_iter', 0) or 0), 'iters': int(iters),
              'started': prev.get('started', round(now, 1)), 'elapsed': float(prev.get('elapsed', 0.)),
              'sessions': int(prev.get('sessions', 0)) + 1, 'pid': os.getpid(), 'host': socket.gethostname()}
    base = status['elapsed']
    _write_status(folder, status)
    previous = _stop_on_sigterm()
    try:
        yield
    except BaseException as e:
        stopped = isinstance(e, (KeyboardInterrupt, SystemExit))
        if isinstance(e, DiskFullError):
            e = DiskFullError(f'{_one_line(e, named=False)}; {_what_survives(learn, folder)}')
        status.update(state='stopped' if stopped else 'failed', iter=_iteration(learn),
                      elapsed=round(base + time.time() - now, 1))
        if not stopped:
            status['error'] = _one_line(e)
        _write_status(folder, status, failing=True)
        close_loggers(learn, exit_code=1)
        if isinstance(e, DiskFullError):
            raise e from None
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    status.update(state='finished', iter=_iteration(learn), elapsed=round(base + time.time() - now, 1))
    status.pop('error', None)
    _write_status(folder, status)
    close_loggers(learn)
