"""`dada-fastai`: train, evaluate, predict, export, data-report and runs from a shell (fastcore parsers, rich output).

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

from .config import (Option, dataset_spec_rule, device_rule, formats_rule, model_file_rule, out_file_rule,
                     out_folder_rule, preset_rule, run_folder_rule, scales_rule, size_rule)

__all__ = ['main', 'train', 'evaluate', 'predict', 'export', 'data_report', 'runs', 'COMMANDS']

console = Console(stderr=False)
err_console = Console(stderr=True)
class _Toggle(argparse.BooleanOptionalAction):
    """`--flag/--no-flag` whose default None means 'not given' (fastcore passes a type we do not need)."""

    def __init__(self, *args, type=None, **kwargs):
        super().__init__(*args, **kwargs)


BOOL = {'action': _Toggle}


def _methods() -> list[str]:
    from .methods import METHODS
    return list(METHODS)


def train(
    config: Annotated[str, Option('a preset name (see --list-presets) or a YAML file; explicit options override it', check=preset_rule)] = None,
    resume: Annotated[str, Option('continue the run in this folder from its last checkpoint; options that would change what it learns are refused', check=run_folder_rule)] = None,
    list_presets: Annotated[store_true, 'list the built-in presets and exit'] = False,
    **options,  # the training options: every field of `config.TrainConfig`, whose types, ranges and help make the flags
):
    """Train a DADA (or AdvEnt, source-only, ablation) model and evaluate it on the target validation set."""
    from .config import ConfigError, list_presets as presets, resolve_config
    from .runs import resume as resume_run, train as train_run
    if list_presets:
        for name in presets():
            console.print(name)
        return 0
    given = {k: v for k, v in options.items() if v is not None}
    if resume:
        if config:
            raise ConfigError('--config does not apply to --resume: a run continues with its own config.yaml')
        res = resume_run(resume, console=console, **given)
    else:
        cfg = resolve_config(config, **given)
        if cfg.source is None:
            console.print('[bold]No --source/--target given: training on the built-in synthetic-to-real toy pair.[/]')
        res = train_run(cfg, console=console)
    _print_iou(res, f'target validation after {res["iters"]} iterations ({res["seconds"]:.0f} s)')
    from .run_folder import RunFolder
    folder = RunFolder(res['run_dir'])
    files = [folder.picture, folder.results, folder.history, folder.curves, folder.last, folder.export]
    console.print(f'run folder: {folder.path}  ({", ".join(f.name for f in files if f.exists())})')
    return 0


def _train_flags(p: argparse.ArgumentParser) -> None:
    """Add a flag for every command-line field of `TrainConfig`: its type, choices and help come from the field.
    Each flag's default is None (not given), so that a preset's value or the built-in default applies."""
    from .config import describe, flag, option_choices, train_options, value_type
    for name, (kind, opt) in train_options().items():
        if not opt.cli:
            continue
        kw = {'dest': name, 'default': None, 'help': opt.help}
        choices, vtype = option_choices(kind, opt), value_type(kind)
        if vtype is bool:
            kw['action'] = _Toggle
        else:
            kw['type'] = vtype
            if choices is not None:
                kw['choices'] = list(choices)
            else:
                kw['metavar'] = f'({vtype.__name__})'
        if vtype in (int, float):
            kw['help'] += f' [{describe(kind, opt)}]'
        p.add_argument(flag(name), **kw)


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


def _train_choices(name: str):
    """The valid values of a training option, for an evaluation option that takes the same (one list)."""
    from .config import option_choices, train_options
    return lambda: option_choices(*train_options()[name])


_TTA = ('none', 'flip')  # --tta: test-time augmentation (scales have their own option)
_TTA_HELP = "test-time augmentation: flip averages the softmax over the image and its mirror (none: the paper's)"
_SCALES_HELP = ("test-time scales: the softmax averaged over the image resized by each (e.g. 0.75,1,1.25; 1: the "
                "paper's)")


def evaluate(
    model: str,  # a run folder, a checkpoint (.pth) or an export (.safetensors)
    target: Annotated[str, Option('KIND:DIR of the labelled target (default: the run\'s target)', check=dataset_spec_rule)] = None,
    classes: Annotated[int, Option('class protocol (default: the model\'s)', choices=_train_choices('classes'))] = None,
    target_size: Annotated[str, Option('HxW the images are resized to (default: the run\'s)', check=size_rule)] = None,
    baseline: Annotated[str, Option('a source-only model: also report the negative transfer rate against it', check=model_file_rule)] = None,
    max_images: Annotated[int, Option('evaluate on the first N images only', low=1)] = None,
    device: Annotated[str, Option('auto, cpu, cuda or cuda:N', check=device_rule)] = 'auto',
    precision: Annotated[str, Option('fp32 (default, as the reference evaluated), or bf16/fp16 autocast (faster on GPUs and on CPUs with native bf16)', choices=_train_choices('precision'))] = 'fp32',
    network: Annotated[str, Option('the network of a self-training run: student (what it exports) or teacher (its mean teacher, from the checkpoint)', choices=lambda: ('student', 'teacher'))] = 'student',
    tta: Annotated[str, Option(_TTA_HELP, choices=lambda: _TTA)] = 'none',
    scales: Annotated[str, Option(_SCALES_HELP, check=scales_rule)] = '1',
    json_out: Annotated[store_true, 'print one JSON object'] = False,
):
    """Evaluate a model on a target validation set: per-class IoU, mIoU, mIoU*, negative transfer and depth."""
    from .inference import evaluate_model
    res = evaluate_model(model, target, classes=classes, target_size=target_size, baseline=baseline,
                         max_images=max_images, device=device, precision=precision, network=network,
                         flip=tta == 'flip', scales=scales)
    if json_out:
        print(json.dumps(res))
    else:
        tta = res.get('tta')
        how = f', test-time augmentation: flip {tta["flip"]}, scales {tta["scales"]}' if tta else ''
        _print_iou(res, f'{model} on {res["target"]} ({res["images"]} images{how})')
    return 0


def predict(
    model: str,  # a run folder, a checkpoint (.pth) or an export (.safetensors)
    inputs: Annotated[str, 'images or folders of images', {'nargs': '+'}],
    out: Annotated[str, Option('output folder; each file is named from its image (<name>_seg.png, <name>_labelIds.png, ...)', check=out_folder_rule)] = 'predictions',
    format: Annotated[str, Option('what to write, a comma list: color (<name>_seg.png, <name>_depth.png), overlay, train-ids, label-ids (Cityscapes labelIds, for the benchmark), depth (16-bit, with depth_encoding.json), npy', check=formats_rule)] = 'color',
    size: Annotated[str, Option('HxW the network sees (default: the run\'s target size)', check=size_rule)] = None,
    device: Annotated[str, Option('auto, cpu, cuda or cuda:N', check=device_rule)] = 'auto',
    precision: Annotated[str, Option('fp32 (default, as the reference evaluated), or bf16/fp16 autocast (faster on GPUs and on CPUs with native bf16)', choices=_train_choices('precision'))] = 'fp32',
    tta: Annotated[str, Option(_TTA_HELP, choices=lambda: _TTA)] = 'none',
    scales: Annotated[str, Option(_SCALES_HELP, check=scales_rule)] = '1',
):
    """Predict images or folders: colour pictures, overlays, class or label ids, depth, arrays, named after each image."""
    from .inference import predict_files
    written = predict_files(model, inputs, out, size=size, device=device, precision=precision, formats=format,
                            flip=tta == 'flip', scales=scales)
    console.print(f'wrote {len(written)} files to {out}/')
    return 0


def export(
    model: str,  # a run folder, a checkpoint (.pth) or an export (.safetensors)
    format: Annotated[str, Option('onnx (for runtimes outside PyTorch; needs the onnx extra) or safetensors (the package\'s own export)', choices=lambda: ('onnx', 'safetensors'))] = 'onnx',
    out: Annotated[str, Option('the file to write (default: RUN/export.onnx or RUN/export.safetensors)', check=out_file_rule)] = None,
):
    """Export a trained segmenter: ONNX (inputs of any size, the preprocessing in its metadata) or safetensors."""
    from .inference import export_model
    path = export_model(model, format, out)
    console.print(f'wrote {path}')
    return 0


def data_report(
    source: Annotated[str, Option('KIND:DIR of the source dataset', check=dataset_spec_rule), {'required': True}] = None,
    target: Annotated[str, Option('KIND:DIR of the target dataset', check=dataset_spec_rule), {'required': True}] = None,
    classes: Annotated[int, Option('class protocol', choices=_train_choices('classes'))] = 16,
    json_out: Annotated[store_true, 'print one JSON object'] = False,
):
    """Check dataset layouts and every file (all damaged files are listed); count items per split, pixels per
    class and the depth range."""
    from .data_report import data_report as report, print_report
    res = report(source, target, n_classes=classes)
    if json_out:
        print(json.dumps(res))
    else:
        print_report(res, console=console)
    if res.get('damaged'):
        from .datasets import DatasetError
        raise DatasetError(f'{len(res["damaged"])} damaged files (listed above); repair or remove them')
    return 0


def runs(
    dirs: Annotated[str, 'run folders, or folders that hold them (default: ./runs)', {'nargs': '*'}] = None,
    sort: Annotated[str, 'sort by this column (numbers: largest first)', {'choices': ['run', 'method', 'arch', 'iters', 'miou', 'miou13', 'date', 'duration', 'status']}] = 'date',
    reverse: Annotated[store_true, 'reverse the order'] = False,
    per_class: Annotated[store_true, 'add the IoU of each class'] = False,
    group: Annotated[store_true, 'one row per group of runs that differ only in their seed: mean, standard deviation and number of seeds'] = False,
    json_out: Annotated[store_true, 'print one JSON list'] = False,
):
    """List training runs side by side, or (--group) the seeds of each setting in one row with their mean and spread.

    A run's row: method, backbone, iterations, mIoU, mIoU*, date, duration, state."""
    from .runs_table import collect_runs, group_runs, print_groups, print_runs
    found = collect_runs(dirs or ['runs'], sort=sort, reverse=reverse)
    if group:
        groups = group_runs(found, sort=sort, reverse=reverse)
        if json_out:
            print(json.dumps(groups))
        else:
            print_groups(groups, console=console)
    elif json_out:
        print(json.dumps(found))
    else:
        print_runs(found, console=console, per_class=per_class)
    return 0


COMMANDS = {'train': train, 'evaluate': evaluate, 'predict': predict, 'export': export, 'data-report': data_report,
            'runs': runs}
_POSITIONAL = {'evaluate': ['model'], 'predict': ['model', 'inputs'], 'export': ['model'], 'data-report': [],
               'runs': ['dirs']}


def _declared(func) -> dict[str, tuple[type, Option]]:
    """A command's options declared with an `Option` in their annotation: name -> (type, Option)."""
    import typing
    found = {}
    for name, hint in typing.get_type_hints(func, include_extras=True).items():
        if typing.get_origin(hint) is Annotated:
            kind, *meta = typing.get_args(hint)
            opt = next((m for m in meta if isinstance(m, Option)), None)
            if opt is not None:
                found[name] = (kind, opt)
    return found


def _parser(name: str) -> argparse.ArgumentParser:
    """The command's parser: fastcore's from its signature, help and choices from its `Option`s, `train`'s flags from
    `TrainConfig`; a usage mistake is one line on stderr and exit code 2."""
    func = COMMANDS[name]
    p = anno_parser(func, prog=f'dada-fastai {name}', pos=_POSITIONAL.get(name))
    declared = _declared(func)
    for action in p._actions:
        if action.dest in declared:
            opt = declared[action.dest][1]
            action.help = opt.help + (f' (default: {action.default})' if action.default is not None else '')
            if opt.choices is not None:
                action.choices, action.metavar = list(opt.choices()), None
        if action.dest == 'json_out':  # `--json-out` reads better as `--json`
            action.option_strings = ['--json']
            p._option_string_actions.pop('--json-out', None)
            p._option_string_actions['--json'] = action
    if name == 'train':
        _train_flags(p)
        from .config import flag, train_options
        may = ', '.join(flag(k) for k, (_, opt) in train_options().items() if opt.on_resume)
        next(a for a in p._actions if a.dest == 'resume').help += f' (those that may change: {may})'

    def error(message: str):
        err_console.print(f'dada-fastai: error: {message}; see {p.prog} --help', highlight=False, markup=False,
                          soft_wrap=True)
        raise SystemExit(2)
    p.error = error
    return p


def _check_args(func, args: dict) -> None:
    """Check each given option that its command declares with an `Option` (range, format, path), before the command
    reads or writes anything; `train`'s options are checked as its configuration resolves."""
    from .config import check_option, flag
    for name, (kind, opt) in _declared(func).items():
        if args.get(name) is not None:
            args[name] = check_option(flag(name), kind, opt, args[name])


def _usage() -> str:
    lines = ['usage: dada-fastai COMMAND [options]', '', 'commands:']
    lines += [f'  {n:<12} {(f.__doc__ or "").splitlines()[0]}' for n, f in COMMANDS.items()]
    lines += ['', "run 'dada-fastai COMMAND --help' for a command's options"]
    return '\n'.join(lines)


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
    from .errors import UserError
    try:
        _check_args(COMMANDS[name], args)
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
    except UserError as e:  # a mistake the user can fix: one line; anything else is a bug and keeps its traceback
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
