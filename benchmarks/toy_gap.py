"""The adaptation gap on the built-in toy pair: source-only (S1), AdvEnt (S2), DADA (S7), self-training (DACS on the
plain network; DADA with self-training, with the depth-aware mix and with ClassMix) and a target-supervised oracle,
over several seeds, with the training settings of `dada-fastai train` with no data (`config._toy_defaults`). Only the
last model of a run counts (a self-training run's student, as `dada-fastai train` evaluates it; its teacher's mIoU is
recorded beside it).

The oracle trains `source_only` on the labelled train split of the toy pair's Cityscapes folder (used as both
source and target; it has no depth, which the depth block treats as missing) and is evaluated, like the others,
on the target validation split. Per-run results are appended to a JSON file as they finish, and runs already in
it are skipped, so an interrupted benchmark continues where it stopped.

    python benchmarks/toy_gap.py                       # 4 methods x 3 seeds, the CLI's toy defaults
    python benchmarks/toy_gap.py --methods source_only,advent,dada,dacs,dada_st,dada_st_classmix --iters 600
    python benchmarks/toy_gap.py --methods source_only,oracle --seeds 0 --iters 300
    python benchmarks/toy_gap.py --methods source_only,dada --set lambda_adv=1e-2   # another setting
    python benchmarks/toy_gap.py --methods dada --seeds 0 --save models   # keeps models/dada_seed0.safetensors
    python benchmarks/toy_gap.py --config my_recipe.yaml --set fusion_bias=null   # a preset; PyTorch's initialisation
"""
from __future__ import annotations

import argparse
import json
import textwrap
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch

from dada_fastai.checkpoint import export_inference
from dada_fastai.config import (SELF_TRAINING_OPTIONS, ConfigError, TrainConfig, check_config, load_preset,
                                resolve_config)
from dada_fastai.methods import method_config
from dada_fastai.runs import build_run_learner, resolve_device, resolve_precision
from dada_fastai.toy import ToyConfig, config_key, make_toy_pair

METHODS = {'source_only': 'S1 source only', 'advent': 'S2 AdvEnt', 'dada': 'S7 DADA',
           'oracle': 'oracle (target-supervised)'}  # the default rows
VARIANTS = {'dacs': ('dacs', {}), 'dada_st': ('dada_st', {}),  # row -> (method, settings of its own)
            'dada_st_classmix': ('dada_st', {'st_mix': 'class'}), 'oracle': ('source_only', {})}
LABELS = {**METHODS, 'dacs': 'DACS (self-training)', 'dada_st': 'DADA + self-training (depth-aware mix)',
          'dada_st_classmix': 'DADA + self-training (ClassMix)'}


def run_one(method: str, seed: int, args) -> dict:
    """Train one run with the toy defaults and return its target-validation results."""
    base, own = VARIANTS.get(method, (method, {}))
    options = dict(method=base, seed=seed, iters=args.iters, arch=args.arch, device=args.device, **own)  # device
    # None: the setting's, else auto
    if args.size:
        options.update(source_size=args.size, target_size=args.size)
    cfg = run_config(args, **options)  # no source/target: the built-in toy pair and its defaults
    toy = ToyConfig(**(cfg.toy or {}))
    if method == 'oracle':  # the target's labelled train split as the source (its warm start too)
        cityscapes = f'cityscapes:{make_toy_pair(cfg=toy)[1]}'
        cfg.source, cfg.target = cityscapes, cityscapes
    resolve_precision(cfg, resolve_device(cfg.device))
    learn = build_run_learner(cfg)  # as `dada-fastai train` starts: from the recipe's warm start, if any
    started = time.time()
    with ExitStack() as stack:
        stack.enter_context(learn.no_bar())
        if not args.verbose:
            stack.enter_context(learn.no_logging())
        learn.fit_iters(cfg.iters, lr=cfg.lr, schedule=cfg.schedule)
        res = learn.evaluate()
        teacher = learn.evaluate(network='teacher')['miou'] if hasattr(learn, 'teacher') else None
    seconds = round(time.time() - started, 1)
    saved = {}
    if args.save:  # the trained model, for benchmarks/toy_depth.py, fusion_gate.py or `dada-fastai predict`
        path = Path(args.save) / f'{method}_seed{seed}.safetensors'
        path.parent.mkdir(parents=True, exist_ok=True)
        saved['model'] = str(export_inference(learn, path))
    return dict(method=method, seed=seed, iters=cfg.iters, arch=cfg.arch, size=cfg.source_size,
                toy=config_key(toy), overrides=_overrides_key(args.setting), miou=res['miou'],
                per_class=res['per_class'], depth=res.get('depth'), seconds=seconds,
                **({'teacher_miou': teacher} if teacher is not None else {}), **saved)


def run_config(args, **options) -> TrainConfig:
    """A run's configuration: the toy defaults, then the preset of --config, then the --set values, then `options`.
    An explicit null (`--set fusion_bias=null`) sets the option to its None (PyTorch's default initialisation, for
    `fusion_bias`), which `resolve_config` would take for 'not given'."""
    overrides = args.overrides
    if not method_config(options.get('method') or 'dada').self_training:  # self-training's settings: its rows only
        overrides = {k: v for k, v in overrides.items() if k not in SELF_TRAINING_OPTIONS}
    cfg = resolve_config(args.config, **{**overrides, **options})
    for name, value in overrides.items():
        if value is None and name not in options:
            setattr(cfg, name, None)
    check_config(cfg)
    return cfg


def _overrides_key(overrides: dict) -> str:
    return ','.join(f'{k}={v}' for k, v in sorted(overrides.items()))


def _key(r: dict) -> tuple:
    return r['method'], r['seed'], r['iters'], r['arch'], r['size'], r['toy'], r.get('overrides', '')


def _parse_set(items: list[str]) -> dict:
    """['lambda_adv=1e-2', ...] -> {'lambda_adv': 0.01}: training options (TrainConfig fields), YAML values."""
    import yaml
    from dada_fastai.config import TrainConfig
    known = set(TrainConfig.__dataclass_fields__)
    out = {}
    for item in items:
        key, sep, value = item.partition('=')
        key = key.strip().replace('-', '_')
        if not sep or key not in known:
            raise SystemExit(f'toy_gap: --set {item!r}: expected OPTION=VALUE with OPTION among {", ".join(sorted(known))}')
        out[key] = yaml.safe_load(value)
    return out


def table(results: list[dict], methods: list[str], seeds: list[int], title: str):
    """A rich table: mean +- std over seeds, min-max spread, and each seed's mIoU."""
    from rich.table import Table
    t = Table(title=title)
    t.add_column('method')
    t.add_column('target mIoU (mean ± std)', justify='right')
    t.add_column('spread (min-max)', justify='right')
    for s in seeds:
        t.add_column(f'seed {s}', justify='right')
    means = {}
    for m in methods:
        by_seed = {r['seed']: r['miou'] for r in results if r['method'] == m}
        vals = np.array([by_seed[s] for s in seeds if s in by_seed])
        if len(vals):
            means[m] = float(vals.mean())
            std = f' ± {vals.std(ddof=1):.1f}' if len(vals) > 1 else ''
            summary, spread = f'{vals.mean():.1f}{std}', f'{vals.min():.1f}-{vals.max():.1f}'
        else:
            summary = spread = '-'
        t.add_row(LABELS.get(m, m), summary, spread,
                  *(f'{by_seed[s]:.1f}' if s in by_seed else '-' for s in seeds))
    return t, means


def class_table(results: list[dict], methods: list[str], title: str):
    """A rich table: each method's per-class target IoU, averaged over the seeds shown."""
    from rich.table import Table
    classes = list(next(iter(results))['per_class']) if results else []
    t = Table(title=title)
    t.add_column('method')
    for c in classes:
        t.add_column(c, justify='right')
    t.add_column('depth δ<1.25', justify='right')
    for m in methods:
        rs = [r for r in results if r['method'] == m]
        if not rs:
            continue
        cells = []
        for c in classes:
            vals = [r['per_class'][c] for r in rs if r['per_class'].get(c) is not None]
            cells.append(f'{np.mean(vals):.1f}' if vals else '-')
        d1 = [r['depth']['delta1'] for r in rs if r.get('depth') and m in DEPTH_METHODS]
        t.add_row(LABELS.get(m, m), *cells, f'{np.mean(d1):.2f}' if d1 else '-')
    return t


DEPTH_METHODS = ('dada', 's3', 's4', 's5', 's6', 's7', 'depth_source_only', 'dada_st', 'dada_st_classmix')  # depth block


def bar_chart(results: list[dict], methods: list[str], seeds: list[int], path: Path, title: str) -> None:
    """The methods' target mIoU: mean over seeds (bars), one standard deviation (error bars), each seed (dots)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for i, m in enumerate(methods):
        vals = [r['miou'] for r in results if r['method'] == m and r['seed'] in seeds]
        if not vals:
            continue
        ax.bar(i, np.mean(vals), yerr=np.std(vals, ddof=1) if len(vals) > 1 else None, capsize=6,
               color=('#999999', '#6b9bd1', '#d1605e', '#59a14f', '#b07aa1', '#f28e2b', '#edc948', '#76b7b2')[i % 8], alpha=0.85)
        ax.scatter([i] * len(vals), vals, color='k', s=12, zorder=3)
        ax.text(i, np.mean(vals) + 0.6, f'{np.mean(vals):.1f}', ha='center', va='bottom', fontsize=9)
    ax.set_xticks(range(len(methods)), [textwrap.fill(LABELS.get(m, m), 16) for m in methods],
                  fontsize=8)  # wrapped: the self-training rows' names are long
    ax.set_ylabel('target mIoU (%)')
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--iters', type=int, default=None, help='training iterations (default: the toy default, 300)')
    p.add_argument('--seeds', default='0,1,2', help='comma-separated training seeds')
    p.add_argument('--arch', default=None, help='timm backbone (default: the toy default, resnet10t)')
    p.add_argument('--size', default=None, help='HxW of training and validation images (default: the toy default, 96x192)')
    p.add_argument('--methods', default=','.join(METHODS), help=f'comma-separated, among {", ".join(LABELS)} (or any '
                   'method of dada-fastai train)')
    p.add_argument('--device', default=None, help='auto (default), cpu, cuda or cuda:N')
    p.add_argument('--threads', type=int, default=None, help='torch CPU threads')
    p.add_argument('--json', default='toy_gap.json', help='per-run results, appended as runs finish')
    p.add_argument('--verbose', action='store_true', help="print fastai's per-epoch table")
    p.add_argument('--figure', default=None, help='also draw the bar chart of the methods\' mIoU into this PNG')
    p.add_argument('--save', default=None, metavar='DIR',
                   help='also export each trained model to DIR/METHOD_seedN.safetensors (loadable by '
                        'dada_fastai.inference.load_model, benchmarks/toy_depth.py, benchmarks/fusion_gate.py); '
                        'one folder per setting, as a run of the same method and seed replaces the file')
    p.add_argument('--config', default=None, metavar='PRESET',
                   help='a preset (YAML file or name) applied over the toy defaults for every run, as '
                        '`dada-fastai train --config`')
    p.add_argument('--set', action='append', default=[], metavar='OPTION=VALUE',
                   help='another training option for every run, over the preset (e.g. lambda_adv=1e-2; '
                        'fusion_bias=null for PyTorch\'s default); repeatable')
    args = p.parse_args(argv)
    args.overrides = _parse_set(args.set)
    seeds = [int(s) for s in args.seeds.split(',') if s.strip()]
    methods = [m.strip() for m in args.methods.split(',') if m.strip()]
    from dada_fastai.methods import METHODS as LEARNER_METHODS
    bad = [m for m in methods if m not in LABELS and m not in LEARNER_METHODS]
    if bad:  # the paper's rows and the oracle, or any other method or ablation (s3..s6, depth_source_only)
        p.error(f'unknown method {bad[0]!r}; valid: {", ".join(dict.fromkeys([*LABELS, *LEARNER_METHODS]))}')
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        args.setting = {**(load_preset(args.config) if args.config else {}), **args.overrides}
        own = sorted(set(args.setting) & {'method', 'seed', 'source', 'target'})
        if own:  # what this benchmark sets itself (--methods, --seeds; the toy pair, the oracle's target)
            raise ConfigError(f'{own[0]} is set by toy_gap.py itself (--methods, --seeds, the toy pair), not by '
                              f'--config or --set')
        defaults = run_config(args)  # what every run shares (and a bad option's one line, before any training)
    except ConfigError as e:
        p.error(str(e))
    args.iters = args.iters or defaults.iters
    args.arch = args.arch or defaults.arch
    size = args.size or defaults.source_size
    toy = config_key(ToyConfig(**(defaults.toy or {})))

    path = Path(args.json)
    results = json.loads(path.read_text()) if path.is_file() else []
    done = {_key(r) for r in results}
    started = time.time()
    for seed in seeds:
        for m in methods:
            key = (m, seed, args.iters, args.arch, size, toy, _overrides_key(args.setting))
            if key in done:
                saved = ' (not saved: delete its row to train it again)' if args.save else ''
                print(f'{m} seed {seed}: already in {path}, skipped{saved}', flush=True)
                continue
            r = run_one(m, seed, args)
            results.append(r)
            path.write_text(json.dumps(results, indent=1))
            print(f'{m} seed {seed}: mIoU {r["miou"]:.2f} in {r["seconds"]:.0f} s', flush=True)
    setting = (args.iters, args.arch, size, toy, _overrides_key(args.setting))
    mine = [r for r in results if _key(r)[2:] == setting]
    extra = f', {_overrides_key(args.setting)}' if args.setting else ''
    title = (f'Toy pair {toy}: target-val mIoU (%), 7 classes, {args.arch}, {size}, {args.iters} iterations'
             f'{extra}, {len(seeds)} seed(s)')
    t, means = table(mine, methods, seeds, title)
    from rich.console import Console
    shown = [r for r in mine if r['method'] in methods and r['seed'] in seeds]
    console = Console(width=140)
    console.print(t)
    console.print(class_table(shown, methods, 'Per-class target IoU (%), mean over the seeds shown'))
    for m in [m for m in methods if m in DEPTH_METHODS]:
        depth = [r['depth'] for r in shown if r.get('depth') and r['method'] == m]
        if depth:
            print(f"depth on the target ({LABELS.get(m, m)}, mean over seeds): "
                  f"delta1={np.mean([d['delta1'] for d in depth]):.3f} abs_rel={np.mean([d['abs_rel'] for d in depth]):.3f}; "
                  f"a constant depth: delta1={np.mean([d['baseline_delta1'] for d in depth]):.3f} "
                  f"abs_rel={np.mean([d['baseline_abs_rel'] for d in depth]):.3f} ({depth[0]['note']})")
    teachers = {m: [r['teacher_miou'] for r in shown if r['method'] == m and r.get('teacher_miou') is not None]
                for m in methods}
    for m, values in teachers.items():
        if values:
            print(f'{LABELS.get(m, m)}: its teacher scores {np.mean(values):.1f} on the mean (the student is what counts)')
    if args.figure:
        bar_chart(shown, methods, seeds, Path(args.figure),
                  f'Toy pair: target mIoU, {args.arch} {size}, {args.iters} iterations{extra}, {len(seeds)} seeds')
        print(f'figure: {args.figure}')
    print(f'wall-clock {time.time() - started:.0f} s for this invocation ({torch.get_num_threads()} torch threads); '
          f'{sum(r["seconds"] for r in mine if r["method"] in methods and r["seed"] in seeds):.0f} s of training '
          f'and evaluation in the runs shown')
    if 'oracle' in means and 'source_only' in means:
        print(f'gap_oracle_minus_source_only={means["oracle"] - means["source_only"]:.1f}')


if __name__ == '__main__':
    main()
