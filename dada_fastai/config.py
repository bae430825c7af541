"""Training configurations: every choice with its default, the paper's presets, and how they combine
(built-in defaults < preset file < explicit options)."""
from __future__ import annotations

import dataclasses
import math
import os
import re
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal


from .errors import ConfigError
from .run_folder import RunFolder, read_mapping

__all__ = ['TrainConfig', 'Option', 'option', 'train_options', 'check_option', 'check_config', 'describe', 'flag',
           'option_choices', 'value_type', 'dataset_spec_rule', 'size_rule', 'device_rule',
           'out_folder_rule', 'out_file_rule', 'formats_rule', 'scales_rule', 'preset_rule', 'run_folder_rule', 'model_file_rule', 'PRESET_DIR', 'list_presets', 'load_preset', 'resolve_config', 'ConfigError',
           'WARM_START_RECIPE', 'warm_start_recipe', 'SELF_TRAINING_OPTIONS']

PRESET_DIR = Path(__file__).parent / 'presets'


# ---------------------------------------------------------------------------------------------------------
# What an option takes
# ---------------------------------------------------------------------------------------------------------
INT_MAX = 2 ** 31 - 1  # the largest integer any option takes (torch and numpy count in 32 or 64 bits)
MAX_SIDE = 16384  # the largest image side an --*-size takes


@dataclass(frozen=True)
class Option:
    """What one option takes beyond its type annotation (`int`, `float`, `bool`, `str`, `Literal[...]`, `X | None`):
    its help text, its valid range and any further check. `check_option` and `parse_option` apply it; the command
    line's help and the error messages are written from it."""
    help: str  # one line for --help
    low: float | None = None  # smallest valid value (numbers)
    above: float | None = None  # values must be greater than this (numbers)
    high: float | None = None  # largest valid value (integers: INT_MAX when not given)
    choices: Callable[[], Sequence] | None = None  # valid values from a registry (`Literal` types list theirs)
    check: Callable[[Any], str | None] | None = None  # what is valid, when the value is not (None: it is)
    cli: bool = True  # a command-line option (structures are set through --config)
    on_resume: bool = False  # may change when a run is resumed (how long and how it is watched, not what it learns)


def option(default: Any, help: str, **kwargs) -> Any:
    """A `TrainConfig` field: its default and its `Option` (help, range, check, ...)."""
    return field(default=default, metadata={'option': Option(help, **kwargs)})


# Rules for string options: each returns what is valid when `value` is not, else None.
def dataset_spec_rule(value: str) -> str | None:
    from .datasets import KINDS
    kind, sep, folder = value.partition(':')
    if not sep or not folder.strip() or kind.lower() not in KINDS:
        return f'KIND:DIR with KIND one of {", ".join(KINDS)} (e.g. synthia:/data/SYNTHIA)'
    return None


def size_rule(value: str) -> str | None:
    from .preprocess import parse_size
    what = f'HxW (e.g. 512x1024), each side from 1 to {MAX_SIDE}'
    try:
        hw = parse_size(value)
    except (TypeError, ValueError):
        return what
    return what if hw is None or not all(1 <= side <= MAX_SIDE for side in hw) else None


def device_rule(value: str) -> str | None:
    return None if re.fullmatch(r'auto|cpu|mps|cuda(:\d{1,3})?', value) else 'auto, cpu, cuda or cuda:N'


def log_rule(value: str) -> str | None:
    names = [name.strip() for name in value.split(',')]
    return None if names and all(n in ('tensorboard', 'wandb') for n in names) else \
        'tensorboard, wandb, or both (tensorboard,wandb)'


def arch_rule(value: str) -> str | None:
    import timm
    from .model import REFERENCE_ARCH
    if value == REFERENCE_ARCH or timm.is_model(value):
        return None
    return f'{REFERENCE_ARCH} or a timm model name (timm.list_models())'


def weights_rule(value: str) -> str | None:
    return None if Path(value).expanduser().is_file() else 'an existing weights file (.pth, .pt or .safetensors)'


def out_folder_rule(value: str) -> str | None:
    """A folder that exists or can be made: not a file, nor under one, and in a writable place."""
    path = Path(value).expanduser()
    if path.exists() and not path.is_dir():
        return 'a folder (this is a file)'
    parent = path
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f'a folder in a writable place ({parent} is a file)'
    if not os.access(parent, os.W_OK | os.X_OK):
        return f'a folder in a writable place ({parent} is not writable)'
    return None


def out_file_rule(value: str) -> str | None:
    """A file that can be written: not a folder, in a folder that exists or can be made in a writable place."""
    path = Path(value).expanduser()
    if path.is_dir() or str(value).endswith(('/', '\\')):
        return 'a file path (this is a folder)'
    if out_folder_rule(str(path.parent)) is not None:
        return f'a file in a folder that exists or can be made, in a writable place ({path.parent} cannot be one)'
    return None


def formats_rule(value: str) -> str | None:
    from .outputs import FORMATS, parse_formats
    try:
        parse_formats(value)
    except ConfigError:
        return f'a comma list of {", ".join(FORMATS)} (e.g. color,label-ids)'
    return None


def scales_rule(value: str) -> str | None:
    from .prediction import TTA_SCALES, check_scales
    try:
        check_scales(value)
    except ConfigError:
        return f'a comma list of numbers from {TTA_SCALES[0]:g} to {TTA_SCALES[1]:g} (e.g. 0.75,1,1.25)'
    return None


def preset_rule(value: str) -> str | None:
    if Path(value).expanduser().is_file() or (PRESET_DIR / f'{value}.yaml').is_file():
        return None
    return f'a YAML file or a preset name ({", ".join(list_presets())})'


def run_folder_rule(value: str) -> str | None:
    folder = RunFolder(Path(value).expanduser())
    return None if folder.config.is_file() else f'a run folder (one with {folder.config.name})'


def model_file_rule(value: str) -> str | None:
    path = Path(value).expanduser()
    if path.is_file() or (path.is_dir() and RunFolder(path).model_file() is not None):
        return None
    return 'a run folder, a checkpoint (.pth) or an export (.safetensors)'


def layers_rule(value) -> str | None:
    ok = isinstance(value, (list, tuple)) and len(value) == 4 and all(
        type(n) is int and 1 <= n <= 1000 for n in value)
    return None if ok else 'four positive block counts, e.g. [3, 4, 23, 3]'


def toy_rule(value) -> str | None:
    from .toy import ToyConfig
    known = {f.name for f in fields(ToyConfig)}
    if isinstance(value, dict) and set(map(str, value)) <= known:
        return None
    return f'a mapping of toy-pair settings ({", ".join(sorted(known))})'


# what the warm start may do its own way
WARM_START_RECIPE = ('opt', 'lr', 'head_lr_mult', 'wd', 'bs', 'schedule', 'lambda_depth')


def warm_start_recipe(recipe: dict | None) -> dict:
    """The values of a `warm_start_recipe`, each checked and typed as the option it names (ConfigError if not)."""
    specs = train_options()
    return {k: check_option(k, *specs[k], v) for k, v in sorted((recipe or {}).items())}


def warm_start_recipe_rule(value) -> str | None:
    if not isinstance(value, dict) or not set(map(str, value)) <= set(WARM_START_RECIPE):
        return f'a mapping of some of {", ".join(WARM_START_RECIPE)}'
    try:
        warm_start_recipe(value)
    except ConfigError as e:
        return f'a mapping of valid values ({e})'
    return None


SELF_TRAINING_OPTIONS = ('st_alpha', 'st_threshold', 'st_confidence', 'st_mix', 'lambda_st', 'st_source_weight', 'lambda_st_depth',
                         'st_start', 'st_augment')  # what self-training methods take, and only they


def _method(name: str):
    from .methods import method_config
    return method_config(name)


def _methods() -> Sequence[str]:
    from .methods import METHODS
    return tuple(METHODS)


# ---------------------------------------------------------------------------------------------------------
# The training options
# ---------------------------------------------------------------------------------------------------------
@dataclass
class TrainConfig:
    """One training run: every training option with its type, default, help and valid range, the one place they
    are declared (the command line's `train` options, the presets' checks and the error messages come from here).
    With no source and target, the built-in toy pair and settings sized for a CPU."""
    source: str | None = option(None, 'KIND:DIR of the labelled source with depth (synthia, cityscapes, vistas, '
                                'folder); none: the built-in toy pair', check=dataset_spec_rule)
    target: str | None = option(None, 'KIND:DIR of the target (train split unlabelled, val split labelled)',
                                check=dataset_spec_rule)
    classes: Literal[16, 7] = option(16, 'class protocol')
    method: str = option('dada', 'source_only (S1), advent (S2), s3..s6, dada (S7), depth_source_only; with '
                         'self-training: dacs, dada_st', choices=_methods)
    arch: str = option('deeplabv2_resnet101', 'backbone: any timm model name, or deeplabv2_resnet101 (the '
                       'reference DeepLab-v2)', check=arch_rule)
    layers: list[int] | None = option(None, 'block counts of the reference backbone (default 3, 4, 23, 3)',
                                      check=layers_rule, cli=False)
    pretrained: bool = option(True, "timm's pretrained weights (needs a download) when no --weights")
    weights: str | None = option(None, "local backbone weights: a timm checkpoint or the reference's ImageNet .pth",
                                 check=weights_rule)
    iters: int = option(90000, 'training iterations (paper: 90000)', low=1, high=10 ** 9, on_resume=True)
    source_size: str = option('760x1280', 'HxW of source images (paper: 760x1280)', check=size_rule)
    target_size: str = option('512x1024', 'HxW of target images (paper: 512x1024)', check=size_rule)
    bs: int = option(1, 'images per domain in a batch (paper: 1)', low=1, high=4096)
    lr: float = option(2.5e-4, 'backbone learning rate (paper: 2.5e-4; toy pair: 2e-3)', above=0)
    head_lr_mult: float = option(10., "the head's learning rate (classifier, depth block) over the backbone's "
                                 "(paper: 10)", above=0)
    d_lr: float = option(1e-4, 'discriminator learning rate, Adam (paper: 1e-4)', above=0)
    wd: float = option(5e-4, "weight decay of the segmenter's optimizer (paper: 5e-4)", low=0)
    opt: Literal['sgd', 'adamw'] = option('sgd', "the segmenter's optimizer: sgd (momentum 0.9, the paper's) or "
                                          "adamw")
    schedule: Literal['poly', 'one_cycle', 'flat_cos', 'constant'] = option('poly', 'learning-rate schedule '
                                                                            '(paper: poly)')
    lambda_seg: float = option(1., 'weight of the segmentation loss (paper: 1)', low=0)
    lambda_depth: float = option(1e-3, 'weight of the depth loss (paper: 1e-3; toy pair: 1)', low=0)
    lambda_adv: float = option(1e-3, 'weight of the adversarial loss (paper: 1e-3)', low=0)
    depth_scale: float = option(1., 'multiplies the inverse-depth targets (paper: 1, i.e. 65536 / (cm + 1); '
                                'toy pair: 0.1)', above=0)
    fusion_bias: float | None = option(None, "initial bias of the depth block's fusion decoder, so that the fusion "
                                       "gate starts near it (default: PyTorch's, as the reference; toy pair: 1)")
    ndf: int = option(64, 'discriminator width (paper: 64)', low=1, high=4096)
    norm: Literal['auto', 'reference', 'timm', 'imagenet', 'none'] = option('auto', "input normalisation (auto: "
                                                                            "the backbone's)")
    augment: bool = option(False, 'random flips, scales and crops (off in the paper)')
    warm_start: int = option(0, 'iterations of a cached source-only stage of the run\'s network that every seed and '
                             'method starts from (0: none; toy pair: 300)', low=0, high=10 ** 9)
    warm_start_recipe: dict | None = option(None, "the warm start's own optimizer, rates, batch size, schedule or "
                                            "depth weight "
                                            f"(some of {', '.join(WARM_START_RECIPE)}; default: the run's)",
                                            check=warm_start_recipe_rule, cli=False)
    init: str | None = option(None, "start the segmenter (and a self-training run's teacher) from a finished run's "
                              "model: a run folder, checkpoint or export of the same network (no warm start then)",
                              check=model_file_rule)
    st_alpha: float = option(0.99, "self-training: the mean teacher's EMA rate (DACS: 0.99; CorDA, DAFormer: 0.999)",
                             above=0, high=1)
    st_threshold: float = option(0.968, 'self-training: confidence that counts a pseudo-label (DACS: 0.968); an image '
                                 "weighs its pseudo-labels by the share of its pixels at or above it", low=0, high=1)
    st_confidence: Literal['image', 'pixel'] = option('image', "self-training: an image weighs its pseudo-labels by "
                                                      "its share of confident pixels ('image', DACS), or each "
                                                      "pixel counts only when confident ('pixel')")
    st_mix: Literal['auto', 'class', 'depth'] = option('auto', "self-training: ClassMix ('class'), or depth-aware "
                                                      "('depth': a pasted source pixel kept only where it is nearer "
                                                      "than the target it covers); auto: depth where the network "
                                                      "predicts it")
    lambda_st: float = option(1., 'self-training: weight of the mixed image\'s cross-entropy (DACS: 1)', low=0)
    st_source_weight: float = option(1., "self-training: weight of the source pixels pasted into a mixed image, "
                                     "against its pseudo-labels' confidence weight (DACS: 1)", low=0)
    lambda_st_depth: float = option(1e-4, "self-training: weight of the berHu depth loss on a mixed image's source "
                                    "pixels (CorDA: a tenth of the source's depth weight)", low=0)
    st_start: int = option(0, 'self-training: the iteration it starts at (0: from the first)', low=0)
    st_augment: bool = option(True, 'self-training: colour jitter and blur on the mixed images (DACS, DAFormer)')
    seed: int = option(1234, 'random seed (paper: 1234)', low=0, high=2 ** 32 - 1)
    checkpoint_every: int = option(2000, 'iterations between checkpoints (0: only at the end)', low=0,
                                   on_resume=True)
    eval_every: int | None = option(None, 'iterations between validations (default: once per pass over the '
                                    'source)', low=1)
    val_max: int | None = option(None, 'validate on at most this many target images during training', low=1,
                                 on_resume=True)
    workers: int | None = option(None, 'data-loading workers (default: 0 on CPU; on GPU up to 8, a core left free)',
                                 low=0, high=256, on_resume=True)
    device: str = option('auto', 'auto, cpu, cuda or cuda:N', check=device_rule, on_resume=True)
    mode: Literal['faithful', 'fast'] = option('faithful', 'faithful: float32 in the reference order; fast: mixed '
                                               'precision, channels_last')
    precision: Literal['bf16', 'fp16', 'fp32'] | None = option(None, 'fast mode precision (default: bf16 on GPU and '
                                                               'on CPUs with native bf16, else fp32)')
    compile: bool = option(False, 'torch.compile the segmenter (fast mode)')
    bn: Literal['batch', 'frozen'] = option('batch', 'BatchNorm: batch statistics (the reference) or frozen running '
                                            'statistics (lets fast mode join source and target in one forward)')
    on_nan: Literal['stop', 'skip'] = option('stop', 'what a NaN/inf loss does: stop with a message, or skip the '
                                             'iteration', on_resume=True)
    deterministic: bool = option(False, 'deterministic algorithms where torch offers them (slower)')
    toy: dict | None = option(None, 'ToyConfig fields for the built-in toy pair', check=toy_rule, cli=False)
    out: str | None = option(None, 'run folder (default: a new folder under ./runs/)', check=out_folder_rule)
    log: str | None = option(None, 'also log scalars and image grids to tensorboard, wandb, or both '
                             '(tensorboard,wandb); history.csv and curves.png are always written', check=log_rule,
                             on_resume=True)
    log_every: int | None = option(None, 'iterations between history rows (default: about 1000 rows a run)', low=1,
                                   on_resume=True)
    image_every: int | None = option(None, 'iterations between TensorBoard/W&B image grids (default: about 20 a '
                                     'run)', low=1, on_resume=True)
    progress: Literal['auto', 'bar', 'lines', 'none'] = option('auto', 'progress bars on a terminal or in a notebook '
                                                              'and plain lines otherwise (auto), or force bar, '
                                                              'lines, none', on_resume=True)
    print_every: int | None = option(None, 'iterations between plain progress lines (default: about 60 a run)',
                                     low=1, on_resume=True)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def train_options() -> dict[str, tuple[Any, Option]]:
    """Every training option: name -> (type, `Option`), in declaration order."""
    hints = typing.get_type_hints(TrainConfig)
    return {f.name: (hints[f.name], f.metadata['option']) for f in fields(TrainConfig)}


def _base(kind) -> tuple[Any, bool]:
    """(the type without None, whether None is valid) of an option's annotation."""
    args = typing.get_args(kind)
    if type(None) in args and typing.get_origin(kind) is not Literal:
        rest = tuple(a for a in args if a is not type(None))
        return (rest[0] if len(rest) == 1 else typing.Union[rest]), True
    return kind, False


def option_choices(kind, opt: Option) -> tuple | None:
    """The valid values of a choice option (its `Literal` or its registry), None for others."""
    base, _ = _base(kind)
    if typing.get_origin(base) is Literal:
        return typing.get_args(base)
    return tuple(opt.choices()) if opt.choices else None


def value_type(kind) -> type | None:
    """int, float, bool or str for an option of that type (a Literal: its values' type), else None."""
    base, _ = _base(kind)
    if typing.get_origin(base) is Literal:
        return type(typing.get_args(base)[0])
    return base if base in (int, float, bool, str) else None


def describe(kind, opt: Option) -> str:
    """What an option takes, in words: 'a positive integer', 'a number >= 0', 'one of a, b'."""
    choices = option_choices(kind, opt)
    if choices is not None:
        return 'one of ' + ', '.join(map(str, choices))
    base = value_type(kind)
    if base is int:
        high = INT_MAX if opt.high is None else int(opt.high)
        low = int(opt.low) if opt.low is not None else (int(opt.above) + 1 if opt.above is not None else None)
        up_to = '' if high == INT_MAX else f' up to {high}'
        if low == 1:
            return 'a positive integer' + up_to
        if high == INT_MAX:
            return 'an integer' + (f' >= {low}' if low is not None else '')
        return f'an integer from {low} to {high}' if low is not None else 'an integer' + up_to
    if base is float:
        if opt.above == 0 and opt.high is None:
            return 'a positive number'
        bounds = [f'> {opt.above:g}' if opt.above is not None else f'>= {opt.low:g}' if opt.low is not None else '',
                  f'<= {opt.high:g}' if opt.high is not None else '']
        return ' and '.join(['a finite number ' + bounds[0] if bounds[0] else 'a finite number'] + bounds[1:2] * bool(bounds[1]))
    if base is bool:
        return 'true or false'
    return 'a non-empty string'


def check_option(name: str, kind, opt: Option, value, where: str = '') -> Any:
    """`value` as option `name`'s type (YAML and the command line give strings: `1e-3`, `"0.01"`, `1000.0`, `yes`),
    or ConfigError naming the option, the value and what is valid. `where`: ' in FILE' for a preset's value."""
    base, optional = _base(kind)
    if value is None:
        if optional:
            return None
        raise ConfigError(f'{name} must be {describe(kind, opt)}{where}, not None')
    value = _coerce(name, value_type(kind), value, where)
    choices = option_choices(kind, opt)
    if choices is not None:
        if value not in choices:
            raise ConfigError(f'invalid {name} {value!r}{where}; valid: {", ".join(map(str, choices))}')
        return value
    vtype = value_type(kind)
    if vtype in (int, float):
        high = opt.high if opt.high is not None else (INT_MAX if vtype is int else None)
        bad = (not math.isfinite(value) or (opt.low is not None and value < opt.low)
               or (opt.above is not None and value <= opt.above) or (high is not None and value > high))
        if bad:
            raise ConfigError(f'{name} must be {describe(kind, opt)}{where}, not {value!r}')
    elif vtype is str and (not isinstance(value, str) or not value.strip()):
        raise ConfigError(f'{name} must be a non-empty string{where}, not {value!r}')
    if opt.check is not None and (valid := opt.check(value)) is not None:
        raise ConfigError(f'{name} must be {valid}{where}, not {value!r}')
    return value


def _coerce(name: str, base: type | None, value, where: str) -> Any:
    """A value as the option's type: numbers written as strings (`1e-3`) or floats (`1000.0`) become numbers, `yes`
    and `off` booleans; what cannot is refused with the option's name."""
    if base not in (int, float, bool) or type(value) is base:
        return value
    try:
        if base is bool:
            if isinstance(value, str) and value.lower() in ('true', 'yes', 'on', 'false', 'no', 'off'):
                return value.lower() in ('true', 'yes', 'on')
            raise ValueError
        if isinstance(value, bool):
            raise ValueError
        number = float(value)
        if base is int:
            if not number.is_integer():
                raise ValueError
            return int(number) if abs(number) < 2 ** 53 else int(str(value).strip())
        return number
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f'{name} must be {"a" if base is not int else "an"} {base.__name__}{where}, not '
                          f'{value!r}') from None


def list_presets() -> list[str]:
    """Names of the built-in presets (the paper's setups and ablations)."""
    return sorted(p.stem for p in PRESET_DIR.glob('*.yaml'))


def load_preset(name_or_path: str | Path) -> dict:
    """A preset's values: a built-in name or a YAML file."""
    path = Path(name_or_path)
    if not path.is_file():
        builtin = PRESET_DIR / f'{name_or_path}.yaml'
        if not builtin.is_file():
            raise ConfigError(f'config {name_or_path!r} not found: give a YAML file or a preset name '
                              f'({", ".join(list_presets())})')
        path = builtin
    return read_mapping(path)


def resolve_config(preset: str | Path | None = None, **options) -> TrainConfig:
    """Built-in defaults, then the preset's values, then explicit `options` (None values are ignored). Every value
    is checked against its option (type, range, choices) before anything is read or created; an explicit option's
    error names it as the command line does (`--lr`)."""
    specs = train_options()
    try:
        values = dict(load_preset(preset)) if preset else {}
    except ConfigError as e:
        raise ConfigError(f'--config: {e}') from None
    values = {str(k).replace('-', '_'): v for k, v in values.items()}
    bad = sorted(set(values) - set(specs))
    if bad:
        raise ConfigError(f'unknown option {bad[0]!r} in {preset}; valid: {", ".join(sorted(specs))}')
    values = {k: check_option(k, *specs[k], v, f' in {preset}') for k, v in values.items()}
    explicit = {k.replace('-', '_'): v for k, v in options.items() if v is not None}
    bad = sorted(set(explicit) - set(specs))
    if bad:
        raise ConfigError(f'unknown option {bad[0]!r}; valid: {", ".join(sorted(specs))}')
    values.update({k: check_option(flag(k), *specs[k], v) for k, v in explicit.items()})
    if values.get('source') is None and values.get('target') is None:
        values = {**_toy_defaults(values.get('method', TrainConfig.method)), **values}
    elif (values.get('source') is None) != (values.get('target') is None):
        raise ConfigError('give both --source and --target, or neither (to train on the built-in toy pair)')
    cfg = TrainConfig(**values)
    check_config(cfg)
    given = sorted(k for k in explicit if k in SELF_TRAINING_OPTIONS)
    if given and not _method(cfg.method).self_training:
        raise ConfigError(f'{flag(given[0])} applies to self-training, not to --method {cfg.method}; use --method '
                          'dacs or dada_st')
    return cfg


def flag(name: str) -> str:
    """An option's command-line flag: 'source_size' -> '--source-size'."""
    return '--' + name.replace('_', '-')


def check_config(cfg: TrainConfig, where: str = '') -> None:
    """Raise ConfigError unless every option of `cfg` is valid and they fit together (`where`: ' in FILE')."""
    for name, (kind, opt) in train_options().items():
        setattr(cfg, name, check_option(name, kind, opt, getattr(cfg, name), where))
    method = _method(cfg.method)
    if cfg.st_mix == 'depth' and not method.depth_block:
        raise ConfigError(f'--st-mix depth{where} needs the teacher\'s depth: a network with the depth block '
                          f'(dada_st), not --method {cfg.method}; use --st-mix class')
    if cfg.mode != 'fast' and (cfg.compile or cfg.precision not in (None, 'fp32')):
        what = f'--precision {cfg.precision}' if cfg.precision not in (None, 'fp32') else '--compile'
        raise ConfigError(f'{what} applies to --mode fast (the faithful mode runs in float32, uncompiled); '
                          'add --mode fast')


def _toy_defaults(method: str = 'dada') -> dict:
    """Settings for the built-in toy pair, sized for a 2-core CPU: about five minutes for a first `dada-fastai
    train` (toy generation and the warm start included). A self-training method gets 600 iterations (its teacher
    needs them to pay off) and a lighter mixed-image loss: the toy's pseudo-labels are noisier than on real data,
    so they weigh a quarter of the source's cross-entropy, pasted source pixels half, and the mixed image's depth
    a tenth. Where they depart from the paper's recipe, and why: docs/toy-pair.md and benchmarks/README.md."""
    toy = dict(classes=7, arch='resnet10t', pretrained=False, iters=300, source_size='96x192',
               target_size='96x192', bs=4, lr=2e-3, d_lr=1e-4, schedule='one_cycle', checkpoint_every=0,
               eval_every=None, lambda_adv=1e-3, norm='imagenet', mode='fast', depth_scale=0.1,
               lambda_depth=1., fusion_bias=1., warm_start=300)
    if method in _methods() and _method(method).self_training:
        toy.update(iters=600, lambda_st=0.25, st_source_weight=0.5, lambda_st_depth=0.1)
    return toy
