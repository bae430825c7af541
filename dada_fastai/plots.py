"""Pictures of a run: inverse depth in colour, the curves of its history (`curves.png`), and grids of target images
with their predicted classes and depth (TensorBoard, W&B). Drawn with matplotlib's object interface (no global
figure state), written atomically."""
from __future__ import annotations

import io
import math
import random
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from .losses import upsample
from .run_folder import RunFolder, read_history
from .storage import atomic_write_bytes

__all__ = ['depth_to_rgb', 'draw_curves', 'fixed_images', 'prediction_grid', 'class_legend', 'show_results']


def depth_to_rgb(depth: np.ndarray | torch.Tensor, vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """Inverse depth (H, W) -> RGB uint8 with the 'magma' colour map: near (large inverse depth) is warm,
    far is dark; missing values black. Percentile scaling unless vmin/vmax are given."""
    from matplotlib import colormaps
    d = np.asarray(depth.detach().cpu() if isinstance(depth, torch.Tensor) else depth, np.float32).squeeze()
    valid = np.isfinite(d)
    if not valid.any():
        return np.zeros((*d.shape, 3), np.uint8)
    lo = np.percentile(d[valid], 2) if vmin is None else vmin
    hi = np.percentile(d[valid], 98) if vmax is None else vmax
    norm = np.clip((d - lo) / max(hi - lo, 1e-12), 0, 1)
    rgb = (colormaps['magma'](norm)[..., :3] * 255).astype(np.uint8)
    rgb[~valid] = 0
    return rgb


# ---------------------------------------------------------------------------------------------------------
# Curves
# ---------------------------------------------------------------------------------------------------------
def _series(rows: list[dict], col: str) -> tuple[np.ndarray, np.ndarray]:
    pts = [(int(r['iter']), float(r[col])) for r in rows if r.get(col) not in (None, '')]
    pts = [(i, v) for i, v in pts if math.isfinite(v)]
    if not pts:
        return np.zeros(0), np.zeros(0)
    a = np.asarray(pts, np.float64)
    return a[:, 0], a[:, 1]


def _smooth(y: np.ndarray) -> np.ndarray:
    w = max(1, len(y) // 40)
    if w == 1:
        return y
    kernel = np.ones(w) / w
    pad = np.concatenate([np.full(w - 1, y[0]), y])
    return np.convolve(pad, kernel, mode='valid')


_LABELS = {'miou': 'mIoU', 'miou13': 'mIoU* (13)', 'delta1': 'depth δ<1.25', 'pl_acc': 'accuracy',
           'pl_conf': 'share above the threshold'}


def draw_curves(history: str | Path, out: str | Path, title: str | None = None) -> Path | None:
    """Draw `out` (PNG) from a history CSV: the segmentation and depth losses, the adversarial (fooling)
    loss, the discriminators' losses on source and target, the learning rates and the target validation
    mIoU (and mIoU*, and the depth's δ<1.25 where the target has depth), by iteration; for a self-training run also
    the mixed images' losses and the pseudo-labels' accuracy and confident share on the target. Training curves are
    shown raw (faint) and smoothed. Written atomically; None when the history has no rows yet."""
    from matplotlib.figure import Figure
    history, out = Path(history), Path(out)
    header, rows, _, problem = read_history(history)
    if problem or not rows:
        return None
    panels = [('segmentation loss (CE)', lambda c: c == 'seg', False),
              ('depth loss (berHu)', lambda c: c == 'depth', False),
              ('adversarial loss (fooling)', lambda c: c.startswith('adv'), False),
              ('discriminator loss', lambda c: c.startswith(('d_src', 'd_trg')), False),
              ('learning rate', lambda c: c.startswith('lr'), True),
              ('target validation (%)', lambda c: c.startswith('miou') or c == 'delta1', False)]
    if 'st' in header:  # self-training: the mixed images' losses, and the teacher's pseudo-labels on the target
        panels[5:5] = [('self-training loss (mixed images)', lambda c: c in ('st', 'st_depth'), False)]
        panels.append(('pseudo-labels on the target (%)', lambda c: c in ('pl_acc', 'pl_conf'), False))
    fig = Figure(figsize=(13 * len(panels) / 6, 6.4), layout='constrained')
    axs = fig.subplots(2, len(panels) // 2)
    for ax, (name, pick, log) in zip(axs.flat, panels):
        ax.set_title(name, fontsize=10)
        drawn = False
        for col in [c for c in header if pick(c)]:
            x, y = _series(rows, col)
            if not len(x):
                continue
            drawn = True
            if name.startswith(('target validation', 'pseudo-labels')):
                scale = 100 if col == 'delta1' else 1  # a share of pixels, drawn in % beside the mIoU
                ax.plot(x, y * scale, 'o-', ms=3, label=_LABELS.get(col, col))
            elif name == 'learning rate':
                ax.plot(x, y, label={'lr': 'backbone', 'lr_head': 'head', 'lr_d': 'discriminators'}.get(col, col))
            else:
                line, = ax.plot(x, y, alpha=0.25, lw=0.8)
                ax.plot(x, _smooth(y), color=line.get_color(), lw=1.4, label=col)
        if drawn:
            if log:
                ax.set_yscale('log')
            ax.legend(fontsize=8, loc='best')
            ax.grid(alpha=0.3)
        else:
            ax.text(0.5, 0.5, 'not in this run' if name.startswith(('adv', 'disc')) else 'no values yet',
                    ha='center', va='center', transform=ax.transAxes, color='grey')
        ax.tick_params(labelsize=8)
    for ax in axs[-1]:
        ax.set_xlabel('iteration', fontsize=9)
    if title is None:
        title = history.parent.name
        cfg = RunFolder(history.parent).read_config()
        if cfg is not None and 'arch' in cfg:
            title += f"  ({cfg['method']}, {cfg['arch']}, {cfg['iters']} iterations)"
    fig.suptitle(title, fontsize=11)
    buf = io.BytesIO()
    fig.savefig(buf, format='png', dpi=72)
    return atomic_write_bytes(out, buf.getvalue())


# ---------------------------------------------------------------------------------------------------------
# Image grids
# ---------------------------------------------------------------------------------------------------------
@contextmanager
def _rng_kept():
    """The random states of Python, NumPy and torch as they were (building a DataLoader draws from them;
    an exact resume needs them untouched)."""
    py, np_state, th = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(np_state)
        torch.set_rng_state(th)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def fixed_images(learn, n: int) -> torch.Tensor | None:
    """The first `n` target validation images (the same at every grid), normalised as the model sees them."""
    try:
        with _rng_kept():
            dl = learn.dls.valid.new(shuffle=False, drop_last=False, bs=1, num_workers=0)
            xs = []
            for i, b in enumerate(dl):
                if i >= n:
                    break
                xs.append(b[0].cpu())
        if not xs or any(x.shape != xs[0].shape for x in xs):
            xs = xs[:1]
        return torch.cat(xs) if xs else None
    except Exception as e:
        warnings.warn(f'no image grids: the validation images could not be read ({type(e).__name__}: {e})')
        return None


def prediction_grid(learn, x: torch.Tensor, max_width: int = 384) -> np.ndarray:
    """(H, W, 3) uint8: one row per image of `x` (normalised target images): the image, the predicted classes
    in the protocol's colours, the predicted inverse depth (near = warm). The model predicts in eval mode,
    without gradients; every module's mode is restored afterwards (training goes on unchanged)."""
    model = getattr(learn.model, 'module', learn.model)  # never DistributedDataParallel's forward on one rank
    modes = [(m, m.training) for m in model.modules()]
    device = next(model.parameters()).device
    model.eval()
    try:
        with torch.no_grad():
            seg, depth = model(x.to(device))
    finally:
        for m, mode in modes:
            m.training = mode
    size = x.shape[-2:]
    pred = upsample(seg.float(), size).argmax(1).cpu().numpy()
    depth = upsample(depth.float(), size).cpu() if depth is not None else None
    images = _as_rgb(learn, x)
    step = max(1, math.ceil(size[1] / max_width))
    rows = []
    for i in range(len(x)):
        cols = [images[i], learn.protocol.colorize(pred[i]),
                depth_to_rgb(depth[i, 0]) if depth is not None else np.zeros_like(images[i])]
        cols = [c[::step, ::step] for c in cols]
        sep = np.full((cols[0].shape[0], 2, 3), 255, np.uint8)
        rows.append(np.concatenate([cols[0], sep, cols[1], sep, cols[2]], 1))
        rows.append(np.full((2, rows[-1].shape[1], 3), 255, np.uint8))
    return np.concatenate(rows[:-1], 0)


def _as_rgb(learn, x: torch.Tensor) -> np.ndarray:
    """(B, H, W, 3) uint8 images from normalised inputs, through the DataLoader's own decoding."""
    dec = learn.dls.valid.decode((x.cpu(),))[0]
    arr = torch.as_tensor(dec).float()
    if arr.max() <= 1.5:
        arr = arr * 255
    return arr.clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()


# ---------------------------------------------------------------------------------------------------------
# show_results
# ---------------------------------------------------------------------------------------------------------
def _taught_row(learn) -> list[tuple[str, np.ndarray]] | None:
    """What a self-training student was taught on its last training batch (its first image): the target image, the
    teacher's pseudo-label (faint under the confidence threshold), the mixed image and its labels."""
    st = getattr(learn, 'self_training', None)
    ex = getattr(st, 'example', None)
    if not ex:
        return None
    proto = learn.protocol
    img = lambda t: (t[0].float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).astype(np.uint8)  # noqa: E731
    pseudo = proto.colorize(ex['pseudo'][0].cpu().numpy()).astype(np.float32)
    faint = (ex['confidence'][0] < st.threshold).cpu().numpy()
    pseudo[faint] = pseudo[faint] * 0.35 + 255 * 0.65
    return [('target image (training)', img(ex['target'])),
            ("teacher's pseudo-label (faint: under the threshold)", pseudo.astype(np.uint8)),
            ('mixed image', img(ex['mixed_rgb'])), ('mixed labels', proto.colorize(ex['labels'][0].cpu().numpy()))]


def class_legend(fig, protocol, fontsize: int = 8):
    """Add a legend of the protocol's class colours under the figure's axes (a reader need not know the palette)."""
    from matplotlib.patches import Patch
    handles = [Patch(facecolor=[c / 255 for c in colour], edgecolor='none', label=name)
               for name, colour in zip(protocol.classes, protocol.palette)]
    return fig.legend(handles=handles, loc='upper center', bbox_to_anchor=(0.5, 0), ncol=min(len(handles), 8),
                      fontsize=fontsize, frameon=False, title='classes', title_fontsize=fontsize)


def show_results(learn, dl, max_n: int = 4, figsize=None):
    """Draw `learn.show_results`: per image of `dl` (bs 1) the target image, its ground truth, the prediction, a
    self-training run's teacher's pseudo-label, and the predicted depth (near = warm); for a self-training run a last
    row of what the student was taught (`_taught_row`); under them a legend of the class colours. Returns the axes."""
    from fastai.vision.data import get_grid
    teacher = getattr(getattr(learn, 'teacher', None), 'model', None) is not None
    taught = _taught_row(learn)
    names = ['target image', 'ground truth', 'prediction'] + (["teacher's pseudo-label"] if teacher else []) + \
        ['predicted depth']
    n, cols = min(max_n, len(dl.dataset)), len(names)
    rows = n + (taught is not None)
    axs = get_grid(cols * rows, nrows=rows, ncols=cols, figsize=figsize or (4 * cols, 2.6 * rows),
                   title=' / '.join(names))
    proto = learn.protocol
    for i, (x, y, *_) in zip(range(n), dl):  # one image at a time: validation images may differ in size
        row = axs[cols * i:cols * (i + 1)]
        pred, depth = learn.predict_batch(x, y.shape[-2:])
        dl.decode((x,))[0][0].show(ctx=row[0])
        row[1].imshow(proto.colorize(y[0].cpu().numpy()))
        row[2].imshow(proto.colorize(pred[0].cpu().numpy()))
        if teacher:
            seg, _ = learn.teacher.predict(x.to(learn.dls.device))
            row[3].imshow(proto.colorize(upsample(seg.float(), y.shape[-2:]).argmax(1)[0].cpu().numpy()))
        if depth is not None:
            row[-1].imshow(depth_to_rgb(depth[0, 0]))
    if taught is not None:
        for ax, (title, picture) in zip(axs[cols * n:], taught):
            ax.imshow(picture)
            ax.set_title(title, fontsize=8)
    for a in axs:
        a.axis('off')
    class_legend(axs[0].figure, proto)
    return axs
