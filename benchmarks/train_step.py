"""Training-step speed and memory: a plain PyTorch DADA loop (the baseline, written from the reference's
description) against our fastai Learner in faithful and fast mode, side by side.

    python benchmarks/train_step.py --device cpu --size 128x256 --iters 5     # a few minutes on CPU
    python benchmarks/train_step.py --device cuda --iters 50                  # paper sizes on a GPU

The plain loop and the faithful mode run in IEEE float32 (TF32 off) with cuDNN's autotuner on, as the reference
did. Each configuration runs in its own process (clean peak memory). Data are fixed in-memory batches on the
device, so the figures are those of the training step itself. The last line is `faithful/plain=R1 fast/plain=R2`
(ratios of iterations per second). `--configs` also takes `plain-tf32` (the plain loop with PyTorch's default TF32
convolutions on CUDA; on CUDA it runs by default), `faithful-frozen-bn` and `fast-frozen-bn` (BatchNorm frozen:
not the reference's computation; in fast mode equal sizes then let source and target share one forward).
"""
from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

N_CLASSES = 16
PAPER_SOURCE, PAPER_TARGET = (760, 1280), (512, 1024)


# ---------------------------------------------------------------------------------------------------------
# The baseline: the reference's loop, written from its description (float32, four backward passes)
# ---------------------------------------------------------------------------------------------------------
def _berhu(pred, target):
    err = pred - target
    abs_err = err.abs()
    c = 0.2 * abs_err.max().item()
    return torch.where(abs_err <= c, abs_err, (err ** 2 + c ** 2) / (2 * c)).mean()


def _surprisal(logits):
    p = F.softmax(logits, dim=1)
    return -p * torch.log2(p + 1e-30) / math.log2(p.shape[1])


def _bce(out, label):
    return F.binary_cross_entropy_with_logits(out, torch.full_like(out, label))


def plain_loop(model, disc, batch, iters: int, warmup: int, lr: float = 2.5e-4, max_iter: int = 90000):
    """The reference's iteration as a plain loop; returns the seconds of the last `iters` iterations."""
    x_s, x_t, labels, depth = batch
    head = [p for m in model.head_modules() for p in m.parameters()]
    head_ids = {id(p) for p in head}
    body = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
    opt = torch.optim.SGD([{'params': body, 'lr': lr}, {'params': head, 'lr': 10 * lr}], lr=lr, momentum=0.9,
                          weight_decay=5e-4)
    opt_d = torch.optim.Adam(disc.parameters(), lr=1e-4, betas=(0.9, 0.99))
    size_s, size_t = labels.shape[-2:], x_t.shape[-2:]
    model.train()
    disc.train()
    for i in range(warmup + iters):
        if i == warmup:
            _sync(x_s.device)
            start = time.perf_counter()
        factor = (1 - i / max_iter) ** 0.9
        opt.param_groups[0]['lr'], opt.param_groups[1]['lr'] = lr * factor, 10 * lr * factor
        opt_d.param_groups[0]['lr'] = 1e-4 * factor
        opt.zero_grad()
        opt_d.zero_grad()
        for p in disc.parameters():
            p.requires_grad = False
        seg_s, dep_s = model(x_s)
        seg_s = F.interpolate(seg_s, size=size_s, mode='bilinear', align_corners=True)
        dep_s = F.interpolate(dep_s, size=size_s, mode='bilinear', align_corners=True)
        loss = F.cross_entropy(seg_s, labels, ignore_index=255) + 1e-3 * _berhu(dep_s, depth)
        loss.backward()
        seg_t, dep_t = model(x_t)
        seg_t = F.interpolate(seg_t, size=size_t, mode='bilinear', align_corners=True)
        dep_t = F.interpolate(dep_t, size=size_t, mode='bilinear', align_corners=True)
        fused_t = _surprisal(seg_t) * dep_t
        (1e-3 * _bce(disc(fused_t), 0.)).backward()
        for p in disc.parameters():
            p.requires_grad = True
        fused_s = (_surprisal(seg_s) * dep_s).detach()
        _bce(disc(fused_s), 0.).backward()
        _bce(disc(fused_t.detach()), 1.).backward()
        opt.step()
        opt_d.step()
    _sync(x_s.device)
    return time.perf_counter() - start


# ---------------------------------------------------------------------------------------------------------
# Our Learner on the same batches
# ---------------------------------------------------------------------------------------------------------
def learner_loop(model, batch, iters: int, warmup: int, mode: str, compile_model: bool = False, bn: str = 'batch'):
    """`dada_learner(...).fit_iters` on a fixed batch; returns the seconds of the last `iters` iterations."""
    from fastai.callback.core import Callback
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader
    from dada_fastai.learner import dada_learner

    class Clock(Callback):
        order = 99

        def after_batch(self):
            if self.training and self.train_iter == warmup:
                _sync(batch[0].device)
                self.start = time.perf_counter()

    n = warmup + iters
    dl = DataLoader(range(n), bs=1, create_batch=lambda _: batch, num_workers=0)
    dl.n_inp = 2
    dls = DataLoaders(dl, DataLoader(range(0), bs=1), device=batch[0].device)
    clock = Clock()
    learn = dada_learner(dls, 'dada', model=model, n_classes=N_CLASSES, mode=mode, compile=compile_model,
                         bn=bn, cbs=[clock])
    with learn.no_bar(), learn.no_logging():
        learn.fit_iters(n, schedule='poly')
    _sync(batch[0].device)
    return time.perf_counter() - clock.start


def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def _batch(device, size_s, size_t):
    g = torch.Generator().manual_seed(0)
    x_s = torch.randn(1, 3, *size_s, generator=g)
    x_t = torch.randn(1, 3, *size_t, generator=g)
    labels = torch.randint(0, N_CLASSES, (1, *size_s), generator=g)
    depth = torch.rand(1, 1, *size_s, generator=g) * 5 + 0.5
    return tuple(t.to(device) for t in (x_s, x_t, labels, depth))


def run_one(args) -> dict:
    """Measure one configuration in this process."""
    from dada_fastai.model import Discriminator, official_deeplabv2_depth
    device = torch.device(args.device)
    torch.manual_seed(0)
    size_s, size_t = _sizes(args)
    batch = _batch(device, size_s, size_t)
    model = official_deeplabv2_depth(N_CLASSES).to(device)
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
    if args.only.startswith('plain'):
        # the reference computed in IEEE float32; 'plain-tf32' is PyTorch's default (TF32 convolutions on CUDA)
        tf32 = args.only == 'plain-tf32'
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.benchmark = True  # as the reference's training script
        secs = plain_loop(model, Discriminator(N_CLASSES).to(device), batch, args.iters, args.warmup)
    else:
        mode, _, bn = args.only.partition('-')  # e.g. 'fast-frozen-bn': fast mode, BatchNorm frozen
        secs = learner_loop(model, batch, args.iters, args.warmup, mode, args.compile, 'frozen' if bn else 'batch')
    if device.type == 'cuda':
        peak = torch.cuda.max_memory_allocated(device) / 2 ** 30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB -> GiB
    from dada_fastai.learner import default_precision
    precision = default_precision(device) if args.only.startswith('fast') else 'fp32'
    return {'config': args.only, 'it_per_s': args.iters / secs, 'peak_gib': peak, 'precision': precision}


def _sizes(args):
    if args.size == 'paper' or (not args.size and args.device.startswith('cuda')):
        return PAPER_SOURCE, PAPER_TARGET
    if args.size:
        sizes = [tuple(int(v) for v in part.lower().split('x')) for part in args.size.split(',')]
        return sizes[0], sizes[-1]
    return (128, 256), (128, 256)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--size', default=None, help="HxW of both domains, or SOURCE,TARGET (HxW,HxW), or 'paper' "
                                                "(760x1280,512x1024; the default on CUDA; 128x256 on CPU)")
    p.add_argument('--iters', type=int, default=5, help='timed iterations per configuration')
    p.add_argument('--warmup', type=int, default=3, help='untimed iterations first')
    p.add_argument('--configs', default=None,
                   help="comma-separated (default: plain,faithful,fast, and plain-tf32 on CUDA): plain, faithful, "
                        "fast, plain-tf32 (the plain loop with PyTorch's default TF32 convolutions on CUDA), "
                        "faithful-frozen-bn, fast-frozen-bn (BatchNorm frozen, not the reference's computation; in "
                        "fast mode source and target then share one forward when --size makes them equal)")
    p.add_argument('--compile', action='store_true', help='torch.compile in fast mode')
    p.add_argument('--json', default=None, help='also write the results to this JSON file')
    p.add_argument('--only', default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.configs = args.configs or ('plain,plain-tf32,faithful,fast' if args.device.startswith('cuda')
                                    else 'plain,faithful,fast')
    if args.only:
        print('\nRESULT ' + json.dumps(run_one(args)), flush=True)
        return
    rows = []
    for config in args.configs.split(','):
        cmd = [sys.executable, __file__, '--only', config, '--device', args.device, '--iters', str(args.iters),
               '--warmup', str(args.warmup)] + (['--size', args.size] if args.size else []) + \
              (['--compile'] if args.compile and config.startswith('fast') else [])
        out = subprocess.run(cmd, capture_output=True, text=True)
        lines = [line for line in out.stdout.splitlines() if line.startswith('RESULT ')]
        if out.returncode or not lines:
            sys.exit(f'{config} failed:\n{out.stderr[-3000:]}')
        rows.append(json.loads(lines[-1][7:]))
    _report(rows, args)


def _cpu_name() -> str:
    """The processor, with whether it computes bf16 natively (fast mode's default precision on CPU follows it)."""
    from dada_fastai.learner import cpu_has_native_bf16
    try:
        name = torch.cpu.get_capabilities().get('cpu_name') or 'CPU'
    except (AttributeError, RuntimeError):
        import platform
        name = platform.processor() or 'CPU'
    return f"{name} CPU ({'native' if cpu_has_native_bf16() else 'no native'} bf16, {torch.get_num_threads()} threads)"


def _report(rows, args):
    from rich.console import Console
    from rich.table import Table
    size_s, size_t = _sizes(args)
    device = torch.cuda.get_device_name() if args.device.startswith('cuda') else _cpu_name()
    table = Table(title=f'DADA training step, reference DeepLab-v2 ResNet-101, {N_CLASSES} classes, batch 1+1, '
                        f'source {size_s[0]}x{size_s[1]}, target {size_t[0]}x{size_t[1]}, {device}, '
                        f'{args.iters} timed iterations')
    for col in ('configuration', 'precision', 'it/s', 's/it', 'peak memory (GiB)', 'vs plain'):
        table.add_column(col, justify='right' if col != 'configuration' else 'left')
    base = next(r['it_per_s'] for r in rows if r['config'] == 'plain') if any(r['config'] == 'plain' for r in rows) else None
    mem = 'GPU allocated' if args.device.startswith('cuda') else 'RSS'
    for r in rows:
        table.add_row(r['config'], r.get('precision', '-'), f"{r['it_per_s']:.3f}", f"{1 / r['it_per_s']:.2f}", f"{r['peak_gib']:.2f} ({mem})",
                      f"{r['it_per_s'] / base:.2f}x" if base else '-')
    Console().print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    ratios = {r['config']: r['it_per_s'] / base for r in rows if base}
    print(f"faithful/plain={ratios.get('faithful', float('nan')):.2f} fast/plain={ratios.get('fast', float('nan')):.2f}")


if __name__ == '__main__':
    main()
