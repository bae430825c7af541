"""`dada-fastai`: train, evaluate, predict, data-report and runs from a shell (fastcore parsers, rich output).

Every failure the user can fix ends in one line on stderr (what is wrong, where, what to do) and a
non-zero exit, never a traceback."""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from typing import Annotated

from fastcore.script import anno_parser, store_true
from rich.console import Console
from rich.table import Table

__all__ = ['main', 'train', 'evaluate', 'predict', 'data_report', 'runs', 'COMMANDS']

console = Console(stderr=False)
err_console = Console(stderr=True)
class _Toggle(argparse.BooleanOptionalAction):
    """`--flag/--no-flag` whose default None means 'not given' (fastcore passes a type we do not need)."""

    def __init__(self, *args, type=None, **kwargs):
        super().__init__(*args, **kwargs)


BOOL = {'action': _Toggle}


def _methods() -> list[str]:
    from .learner import METHODS
    return list(METHODS)


def train(
    source: str = None,  # KIND:DIR of the labelled source with depth (synthia, cityscapes, vistas, folder); none: the built-in toy pair
    target: str = None,  # KIND:DIR of the target (train split unlabelled, val split labelled)
    config: str = None,  # a preset name (see --list-presets) or a YAML file; explicit options override it
    classes: Annotated[int, 'class protocol', {'choices': [16, 7]}] = None,
    method: Annotated[str, 'source_only (S1), advent (S2), s3..s6, dada (S7), depth_source_only', {'choices': _methods()}] = None,
    arch: str = None,  # backbone: any timm model name, or deeplabv2_resnet101 (the reference DeepLab-v2)
    pretrained: Annotated[bool, "timm's pretrained weights (needs a download) when no --weights", BOOL] = None,
    weights: str = None,  # local backbone weights: a timm checkpoint or the reference's ImageNet .pth
    iters: int = None,  # training iterations (paper: 90000)
    source_size: str = None,  # HxW of source images (paper: 760x1280)
    target_size: str = None,  # HxW of target images (paper: 512x1024)
    bs: int = None,  # images per domain in a batch (paper: 1)
    lr: float = None,  # backbone learning rate; the head trains at 10x (paper: 2.5e-4)
    d_lr: float = None,  # discriminator learning rate (paper: 1e-4)
    schedule: Annotated[str, 'learning-rate schedule', {'choices': ['poly', 'one_cycle', 'flat_cos', 'constant']}] = None,
    seed: int = None,  # random seed (paper: 1234)
    out: str = None,  # run folder (default: a new folder under ./runs/)
    resume: str = None,  # continue the run in this folder from its last checkpoint
    checkpoint_every: int = None,  # iterations between checkpoints (0: only at the end)
    eval_every: int = None,  # iterations between validations
    val_max: int = None,  # validate on at most this many target images during training
    device: str = None,  # auto, cpu, cuda or cuda:N
    mode: Annotated[str, 'faithful: float32 in the reference order; fast: mixed precision, channels_last', {'choices': ['faithful', 'fast']}] = None,
    precision: Annotated[str, 'fast mode precision (default: bf16 on GPU, fp32 on CPU)', {'choices': ['bf16', 'fp16', 'fp32']}] = None,
    compile: Annotated[bool, 'torch.compile the segmenter (fast mode)', BOOL] = None,
    bn: Annotated[str, "BatchNorm: batch statistics (the reference) or frozen running statistics (lets fast mode join source and target in one forward)", {'choices': ['batch', 'frozen']}] = None,
    deterministic: Annotated[bool, 'deterministic algorithms where torch offers them (slower)', BOOL] = None,
    workers: int = None,  # data-loading workers
    on_nan: Annotated[str, 'what a NaN/inf loss does: stop with a message, or skip the iteration', {'choices': ['stop', 'skip']}] = None,
    log: Annotated[str, 'also log scalars and image grids to tensorboard, wandb, or both (tensorboard,wandb); history.csv and curves.png are always written'] = None,
    log_every: int = None,  # iterations between history rows (default: about 1000 rows a run)
    image_every: int = None,  # iterations between TensorBoard/W&B image grids (default: about 20 a run)
    progress: Annotated[str, 'progress bars on a terminal or in a notebook and one plain line every --print-every iterations otherwise (auto), or force bar, lines, none', {'choices': ['auto', 'bar', 'lines', 'none']}] = None,
    print_every: int = None,  # iterations between plain progress lines (default: about 60 a run)
    wd: float = None,  # weight decay of the segmenter's SGD (paper: 5e-4)
    lambda_seg: float = None,  # weight of the segmentation loss (paper: 1)
    lambda_depth: float = None,  # weight of the depth loss (paper: 1e-3; toy pair: 1)
    lambda_adv: float = None,  # weight of the adversarial loss (paper: 1e-3)
    depth_scale: float = None,  # multiplies the inverse-depth targets (paper: 1; toy pair: 0.01)
    warm_start: int = None,  # iterations of a cached source-only stage that every method starts from (0: none; toy pair: 400)
    ndf: int = None,  # discriminator width (paper: 64)
    norm: Annotated[str, 'input normalisation (auto: the backbone\'s)', {'choices': ['auto', 'reference', 'timm', 'imagenet', 'none']}] = None,
    augment: Annotated[bool, 'random flips, scales and crops (off in the paper)', BOOL] = None,
    list_presets: Annotated[store_true, 'list the built-in presets and exit'] = False,
):
    """Train a DADA (or AdvEnt, source-only, ablation) model and evaluate it on the target validation set."""
    from .config import list_presets as presets, resolve_config
    from .runs import resume as resume_run, train as train_run
    if list_presets:
        for name in presets():
            console.print(name)
        return 0
    if resume:
        res = resume_run(resume, console=console, iters=iters)
    else:
        opts = {k: v for k, v in locals().items() if k in _TRAIN_OPTIONS}
        cfg = resolve_config(config, **opts)
        if cfg.source is None:
            console.print('[bold]No --source/--target given: training on the built-in synthetic-to-real toy pair.[/]')
        res = train_run(cfg, console=console)
    _print_iou(res, f'target validation after {res["iters"]} iterations ({res["seconds"]:.0f} s)')
    console.print(f'run folder: {res["run_dir"]}  (results.png, results.json, history.csv, curves.png, last.pth, '
                  'export.safetensors)')
    return 0


_TRAIN_OPTIONS = ('source', 'target', 'classes', 'method', 'arch', 'pretrained', 'weights', 'iters', 'source_size',
                  'target_size', 'bs', 'lr', 'd_lr', 'schedule', 'seed', 'out', 'checkpoint_every', 'eval_every',
                  'val_max', 'device', 'mode', 'workers', 'on_nan', 'precision', 'compile', 'bn', 'deterministic',
                  'log', 'log_every', 'image_every', 'progress', 'print_every', 'wd', 'lambda_seg', 'lambda_depth',
                  'lambda_adv', 'depth_scale', 'warm_start', 'ndf', 'norm', 'augment')


def _print_iou(res: dict, title: str) -> None:
    table = Table(title=title)
    table.add_column('class')
    table.add_column('IoU %', justify='right')
    for name, iou in res['per_class'].items():
        table.add_row(name, _pct(iou))
    table.add_section()
    table.add_row('[bold]mIoU', f'[bold]{_pct(res["miou"])}')
    if res.get('miou13') is not None:
        table.add_row('[bold]mIoU* (13)', f'[bold]{_pct(res["miou13"])}')
    if res.get('negative_transfer') is not None:
        table.add_row('negative transfer', f'{res["negative_transfer"]:.1f}')
    depth = res.get('depth')
    if depth:
        table.add_section()
        table.add_row('depth δ<1.25', f'{depth["delta1"]:.3f}  (constant: {depth["baseline_delta1"]:.3f})')
        table.add_row('depth abs-rel', f'{depth["abs_rel"]:.3f}  (constant: {depth["baseline_abs_rel"]:.3f})')
    console.print(table)
    if depth:
        console.print(f'depth on {depth["images"]} target images: {depth["note"]}', highlight=False)


def _pct(value: float | None) -> str:
    return '-' if value is None or value != value else f'{value:.1f}'


def evaluate(
    model: str,  # a run folder, a checkpoint (.pth) or an export (.safetensors)
    target: str = None,  # KIND:DIR of the labelled target (default: the run's target)
    classes: Annotated[int, 'class protocol (default: the model\'s)', {'choices': [16, 7]}] = None,
    target_size: str = None,  # HxW the images are resized to (default: the run's)
    baseline: str = None,  # a source-only model: also report the negative transfer rate against it
    max_images: int = None,  # evaluate on the first N images only
    device: str = 'auto',  # auto, cpu, cuda or cuda:N
    precision: Annotated[str, 'fp32 (default, as the reference evaluated), or bf16/fp16 autocast (faster on GPUs and on CPUs with native bf16)', {'choices': ['fp32', 'bf16', 'fp16']}] = 'fp32',
    json_out: Annotated[store_true, 'print one JSON object'] = False,
):
    """Evaluate a model on a target validation set: per-class IoU, mIoU, mIoU*, negative transfer and depth."""
    from .inference import evaluate_model
    res = evaluate_model(model, target, classes=classes, target_size=target_size, baseline=baseline,
                         max_images=max_images, device=device, precision=precision)
    if json_out:
        print(json.dumps(res))
    else:
        _print_iou(res, f'{model} on {res["target"]} ({res["images"]} images)')
    return 0


def predict(
    model: str,  # a run folder, a checkpoint (.pth) or an export (.safetensors)
    inputs: Annotated[str, 'images or folders of images', {'nargs': '+'}],
    out: str = 'predictions',  # output folder for <name>_seg.png and <name>_depth.png
    size: str = None,  # HxW the network sees (default: the run's target size)
    device: str = 'auto',  # auto, cpu, cuda or cuda:N
    precision: Annotated[str, 'fp32 (default, as the reference evaluated), or bf16/fp16 autocast (faster on GPUs and on CPUs with native bf16)', {'choices': ['fp32', 'bf16', 'fp16']}] = 'fp32',
):
    """Predict colour-coded segmentation and depth PNGs for images or folders."""
    from .inference import predict_files
    written = predict_files(model, inputs, out, size=size, device=device, precision=precision)
    console.print(f'wrote {len(written)} images to {out}/')
    return 0


def data_report(
    source: Annotated[str, 'KIND:DIR of the source dataset', {'required': True}] = None,
    target: Annotated[str, 'KIND:DIR of the target dataset', {'required': True}] = None,
    classes: Annotated[int, 'class protocol', {'choices': [16, 7]}] = 16,
    json_out: Annotated[store_true, 'print one JSON object'] = False,
):
    """Check dataset layouts; count items per split, pixels per class and the depth range."""
    from .report import data_report as report, print_report
    res = report(source, target, n_classes=classes)
    if json_out:
        print(json.dumps(res))
    else:
        print_report(res, console=console)
    return 0


def runs(
    dirs: Annotated[str, 'run folders, or folders that hold them (default: ./runs)', {'nargs': '*'}] = None,
    sort: Annotated[str, 'sort by this column (numbers: largest first)', {'choices': ['run', 'method', 'arch', 'iters', 'miou', 'miou13', 'date', 'duration', 'status']}] = 'date',
    reverse: Annotated[store_true, 'reverse the order'] = False,
    per_class: Annotated[store_true, 'add the IoU of each class'] = False,
    json_out: Annotated[store_true, 'print one JSON list'] = False,
):
    """List training runs side by side: method, backbone, iterations, mIoU, mIoU*, date, duration, state."""
    from .runs_table import collect_runs, print_runs
    found = collect_runs(dirs or ['runs'], sort=sort, reverse=reverse)
    if json_out:
        print(json.dumps(found))
    else:
        print_runs(found, console=console, per_class=per_class)
    return 0


COMMANDS = {'train': train, 'evaluate': evaluate, 'predict': predict, 'data-report': data_report, 'runs': runs}
_POSITIONAL = {'evaluate': ['model'], 'predict': ['model', 'inputs'], 'data-report': [], 'runs': ['dirs']}


def _parser(name: str) -> argparse.ArgumentParser:
    func = COMMANDS[name]
    p = anno_parser(func, prog=f'dada-fastai {name}', pos=_POSITIONAL.get(name))
    for action in p._actions:  # `--json-out` reads better as `--json`
        if action.dest == 'json_out':
            action.option_strings = ['--json']
            p._option_string_actions.pop('--json-out', None)
            p._option_string_actions['--json'] = action
    return p


def _usage() -> str:
    lines = ['usage: dada-fastai COMMAND [options]', '', 'commands:']
    lines += [f'  {n:<12} {(f.__doc__ or "").splitlines()[0]}' for n, f in COMMANDS.items()]
    lines += ['', "run 'dada-fastai COMMAND --help' for a command's options"]
    return '\n'.join(lines)


def _known_errors() -> tuple[type[BaseException], ...]:
    from .checkpoint import CheckpointError
    from .config import ConfigError
    from .datasets import DatasetError
    from .model import WeightsError
    from .callbacks import NonFiniteLoss
    from .runs import RunError
    return (DatasetError, ConfigError, WeightsError, CheckpointError, RunError, NonFiniteLoss, FileNotFoundError,
            ValueError)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `dada-fastai` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    warnings.filterwarnings('ignore', category=FutureWarning)  # third-party deprecation notes, not the user's concern
    if not argv or argv[0] in ('-h', '--help'):
        print(_usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        err_console.print(f"dada-fastai: unknown command {name!r}; valid: {', '.join(COMMANDS)}", highlight=False)
        return 2
    args = vars(_parser(name).parse_args(rest))
    args.pop('pdb', None)
    args.pop('xtra', None)
    import torch
    from .datasets import DatasetError
    try:
        code = COMMANDS[name](**args) or 0
        from .distributed import shutdown
        shutdown()  # under `accelerate launch`: all processes leave together
        return code
    except torch.cuda.OutOfMemoryError:
        _fail('out of GPU memory: try smaller --source-size/--target-size, --bs 1, or --mode fast (mixed precision)')
    except KeyboardInterrupt:
        _fail('interrupted; the last checkpoint of the run is intact (continue with --resume RUN_DIR)', code=130)
    except DatasetError as e:
        hint = '' if name == 'data-report' else '; check the data with `dada-fastai data-report`'
        _fail(_message(e) + hint)
    except _known_errors() as e:
        _fail(_message(e))
    return 1


def _message(e: BaseException) -> str:
    """The user's one line of an error, without what fastai and DataLoader workers wrap around it."""
    text = str(e)
    if 'Original Traceback' in text:  # raised in a DataLoader worker: the original message comes last
        text = text.rsplit(f'{type(e).__name__}: ', 1)[-1]
    lines = [ln.strip() for ln in text.splitlines()
             if ln.strip() and not ln.startswith('Exception occured in')]  # fastai's callback wrapper
    return lines[0] if lines else type(e).__name__


def _fail(msg: str, code: int = 1):
    err_console.print(f'dada-fastai: error: {msg}', highlight=False, markup=False, soft_wrap=True)
    raise SystemExit(code)


if __name__ == '__main__':
    sys.exit(main())
