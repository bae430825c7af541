"""Training configurations: every choice with its default, the paper's presets, and how they combine
(built-in defaults < preset file < explicit options)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from pathlib import Path

import yaml

__all__ = ['TrainConfig', 'PRESET_DIR', 'list_presets', 'load_preset', 'resolve_config', 'ConfigError']

PRESET_DIR = Path(__file__).parent / 'presets'


class ConfigError(ValueError):
    """A configuration that cannot be used (bad YAML, unknown key, bad value)."""


@dataclass
class TrainConfig:
    """One training run. With no source and target, the built-in toy pair and settings sized for a CPU."""
    source: str | None = None  # KIND:DIR of the labelled source (synthia, cityscapes, vistas, folder)
    target: str | None = None  # KIND:DIR of the target (train split unlabelled, val split labelled)
    classes: int = 16  # class protocol: 16 or 7
    method: str = 'dada'  # source_only, advent, dada, s1..s7, depth_source_only
    arch: str = 'deeplabv2_resnet101'  # any timm model, or deeplabv2_resnet101 (the reference backbone)
    layers: list[int] | None = None  # block counts of the reference backbone (default 3, 4, 23, 3)
    pretrained: bool = True  # timm's ImageNet weights (download) when no --weights
    weights: str | None = None  # local weights: a timm checkpoint, the reference's .pth (ImageNet or DADA)
    iters: int = 90000  # training iterations
    source_size: str = '760x1280'  # HxW of source images
    target_size: str = '512x1024'  # HxW of target images
    bs: int = 1  # source images per batch (and as many target images)
    lr: float = 2.5e-4  # backbone learning rate (head at 10x)
    d_lr: float = 1e-4  # discriminators' learning rate (Adam)
    wd: float = 5e-4  # weight decay (SGD)
    schedule: str = 'poly'  # poly (reference), one_cycle, flat_cos, constant
    lambda_seg: float = 1.
    lambda_depth: float = 1e-3
    lambda_adv: float = 1e-3
    depth_scale: float = 1.  # multiplies the inverse-depth targets (reference: 1, i.e. 65536 / (cm + 1))
    ndf: int = 64  # discriminator width
    norm: str = 'auto'  # auto, reference, timm, imagenet, none
    augment: bool = False  # flips (off in the paper's recipe)
    warm_start: int = 0  # iterations of a cached source-only stage of the run's network that every seed and method starts from
    seed: int = 1234
    checkpoint_every: int = 2000  # iterations between checkpoints (0: only at the end)
    eval_every: int | None = None  # iterations between validations (default: once per pass over the source)
    val_max: int | None = None  # evaluate on at most this many target images during training
    workers: int | None = None  # DataLoader workers (default: 0 on CPU; on GPU up to 8, a core left free)
    device: str = 'auto'  # auto, cpu, cuda, cuda:N
    mode: str = 'faithful'  # faithful (float32, reference order) or fast (mixed precision, channels_last)
    precision: str | None = None  # fast mode: bf16 (default on GPU), fp16, fp32 (default on CPU)
    compile: bool = False  # torch.compile the segmenter (fast mode)
    bn: str = 'batch'  # batch (reference: each batch's statistics) or frozen (running statistics, not updated)
    on_nan: str = 'stop'  # stop or skip an iteration whose loss is not finite
    deterministic: bool = False  # deterministic algorithms (slower)
    toy: dict | None = None  # ToyConfig fields for the built-in toy pair
    out: str | None = None  # run folder (default: a new folder under ./runs/)
    log: str | None = None  # also log to tensorboard, wandb, or both (comma-separated); history.csv always
    log_every: int | None = None  # iterations between history rows (default: about 1000 rows a run)
    image_every: int | None = None  # iterations between TensorBoard/W&B image grids (default: about 20 a run)
    progress: str = 'auto'  # auto (bars on a terminal or in a notebook, plain lines otherwise), bar, lines, none
    print_every: int | None = None  # iterations between plain progress lines (default: about 60 a run)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


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
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        where = getattr(e, 'problem_mark', None)
        at = f' at line {where.line + 1}' if where is not None else ''
        raise ConfigError(f'bad YAML in {path}{at}: {getattr(e, "problem", None) or e}') from None
    if not isinstance(values, dict):
        raise ConfigError(f'{path} must hold a mapping of option: value, not {type(values).__name__}')
    return values


def resolve_config(preset: str | Path | None = None, **options) -> TrainConfig:
    """Built-in defaults, then the preset's values, then explicit `options` (None values are ignored)."""
    known = {f.name for f in fields(TrainConfig)}
    values = dict(load_preset(preset)) if preset else {}
    values = {k.replace('-', '_'): v for k, v in values.items()}
    bad = sorted(set(values) - known)
    if bad:
        raise ConfigError(f'unknown option {bad[0]!r} in {preset}; valid: {", ".join(sorted(known))}')
    values.update({k: v for k, v in options.items() if v is not None})
    bad = sorted(set(values) - known)
    if bad:
        raise ConfigError(f'unknown option {bad[0]!r}')
    if values.get('source') is None and values.get('target') is None:
        values = {**_toy_defaults(), **values}
    elif (values.get('source') is None) != (values.get('target') is None):
        raise ConfigError('give both --source and --target, or neither (to train on the built-in toy pair)')
    values = {k: _coerce(k, v, preset) for k, v in values.items()}
    cfg = TrainConfig(**values)
    _check(cfg)
    return cfg


def _coerce(name: str, value, preset) -> object:
    """A preset's value as its option's type: YAML reads `1e-3` (no dot) as a string, and `lr: "0.01"` or
    `iters: 1000.0` happen too. Numbers come back as numbers; what cannot is refused with the option's name."""
    import typing
    kind = typing.get_type_hints(TrainConfig)[name]
    base = next((t for t in typing.get_args(kind) if t is not type(None)), kind) if typing.get_args(kind) else kind
    if value is None or base not in (int, float, bool) or type(value) is base:
        return value
    where = f' in {preset}' if preset else ''
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
            return int(number)
        return number
    except (TypeError, ValueError):
        raise ConfigError(f'{name} must be {"a" if base is not int else "an"} {base.__name__}{where}, not '
                          f'{value!r}') from None


def _toy_defaults() -> dict:
    """Settings for the built-in toy pair, sized for a 2-core CPU: about five minutes for a first `dada-fastai
    train` (toy generation and the warm start included). Where they depart from the paper's recipe, and why:
    README, "The built-in toy pair"."""
    return dict(classes=7, arch='resnet10t', pretrained=False, iters=300, source_size='96x192',
                target_size='96x192', bs=4, lr=2e-3, d_lr=1e-4, schedule='one_cycle', checkpoint_every=0,
                eval_every=None, lambda_adv=1e-3, norm='imagenet', ndf=32, mode='fast', depth_scale=0.01,
                lambda_depth=1., warm_start=400)


def _check(cfg: TrainConfig) -> None:
    from .learner import METHODS
    choices = {'method': list(METHODS), 'schedule': ['poly', 'one_cycle', 'flat_cos', 'constant'],
               'norm': ['auto', 'reference', 'timm', 'imagenet', 'none'], 'mode': ['faithful', 'fast'],
               'bn': ['batch', 'frozen'],
               'on_nan': ['stop', 'skip'], 'classes': [16, 7], 'precision': [None, 'bf16', 'fp16', 'fp32'],
               'progress': ['auto', 'bar', 'lines', 'none']}
    for name, valid in choices.items():
        if getattr(cfg, name) not in valid:
            raise ConfigError(f'invalid {name} {getattr(cfg, name)!r}; valid: {", ".join(map(str, valid))}')
    if cfg.mode != 'fast' and (cfg.compile or cfg.precision not in (None, 'fp32')):
        what = f'--precision {cfg.precision}' if cfg.precision not in (None, 'fp32') else '--compile'
        raise ConfigError(f'{what} applies to --mode fast (the faithful mode runs in float32, uncompiled); '
                          'add --mode fast')
    for name in ('iters', 'bs'):
        if not isinstance(getattr(cfg, name), int) or getattr(cfg, name) < 1:
            raise ConfigError(f'{name} must be a positive integer, not {getattr(cfg, name)!r}')
    for name in ('log_every', 'image_every', 'print_every'):
        value = getattr(cfg, name)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ConfigError(f'{name} must be a positive integer, not {value!r}')
    for name in (cfg.log or '').split(','):
        if name.strip() not in ('', 'tensorboard', 'wandb'):
            raise ConfigError(f'invalid log {name.strip()!r}; valid: tensorboard, wandb (comma-separated for both)')
    from .data import parse_size
    for name in ('source_size', 'target_size'):
        try:
            parse_size(getattr(cfg, name))
        except ValueError as e:
            raise ConfigError(f'{name}: {e}') from None
