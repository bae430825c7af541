"""Using trained models: load a run, a checkpoint or an export; evaluate it on a labelled target set (with
the negative transfer rate against a baseline); predict it on images into the files of `outputs` (colour pictures,
class and label ids, encoded depth, arrays), with or without test-time augmentation; export it (safetensors, ONNX)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from .checkpoint import load_inference_file, save_export
from .data import normalization, target_dataloader
from .datasets import DataItem, open_dataset
from .distributed import resolve_device
from .errors import CheckpointError, ConfigError, DatasetError, DiskFullError
from .learner import DADALearner
from .meta import RunMeta
from .model import DADA, REFERENCE_ARCH
from .outputs import check_formats, parse_formats, write_depth_encoding, write_outputs
from .prediction import TestTimeAugmentation, check_scales, prediction_to_size, prediction_triple
from .preprocess import fit_to_size, image_to_rgb, parse_size
from .run_folder import EXPORT_FILE, LAST_CHECKPOINT, PREV_CHECKPOINT, RunFolder

__all__ = ['LoadedModel', 'load_model', 'evaluate_model', 'predict_files', 'export_model', 'EXPORT_FORMATS',
           'IMAGE_SUFFIXES']

EXPORT_FORMATS = ('onnx', 'safetensors')

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp')


class LoadedModel:
    """A segmenter ready for inference, with the preprocessing and sizes of the run it comes from (`meta`, with
    the run's configuration as `meta.config` when a config.yaml sits beside the model)."""

    def __init__(self, model: DADA, meta: RunMeta, device: torch.device, precision: str = 'fp32'):
        self.model, self.meta, self.device = model.eval().to(device), meta, device
        if precision not in ('fp32', 'bf16', 'fp16'):
            raise ConfigError(f'unknown precision {precision!r}; valid: fp32, bf16, fp16')
        self.precision = precision
        self.protocol = meta.protocol
        self.norm = normalization(meta.norm or 'imagenet', meta.arch)

    @property
    def run_config(self) -> dict:
        """The run's configuration beside the model ({} when there is none)."""
        return dict(self.meta.config or {})

    def preprocess(self, rgb: np.ndarray, size: tuple[int, int] | None, fit: str = 'stretch') -> torch.Tensor:
        """(H, W, 3) uint8 -> normalised (1, 3, h, w) float on the model's device (bicubic resize; `fit='pad'`
        keeps the aspect ratio and pads, as the training data of such a dataset)."""
        from fastai.vision.core import TensorImage
        img = fit_to_size(Image.fromarray(rgb), size, Image.BICUBIC, (0, 0, 0), fit)
        x = TensorImage(torch.from_numpy(np.array(img)).permute(2, 0, 1)[None].float() / 255)
        for tfm in self.norm:
            x = tfm(x)
        return torch.Tensor(x).to(self.device)

    def augmented(self, flip: bool = False, scales: str | Sequence[float] = (1.,)) -> nn.Module:
        """The segmenter, under test-time augmentation (`prediction.TestTimeAugmentation`) when `flip` or `scales`
        ask for it."""
        scales = check_scales(scales)
        return self.model if not flip and scales == (1.,) else TestTimeAugmentation(self.model, flip, scales)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, flip: bool = False,
                scales: str | Sequence[float] = (1.,)) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The segmenter's (logits, inverse depth) in float32, computed in `self.precision` (bf16 or fp16: under
        autocast on the model's device). With `flip` or `scales`, under test-time augmentation: the log of the
        softmax averaged over flips and scales, and the averaged depth, at the input's size."""
        model = self.augmented(flip, scales)
        if self.precision == 'fp32':
            seg, depth = model(x)
        else:
            dtype = torch.bfloat16 if self.precision == 'bf16' else torch.float16
            with torch.autocast(self.device.type, dtype=dtype):
                seg, depth = model(x)
        return seg.float(), (depth.float() if depth is not None else None)

    @property
    def input_size(self) -> tuple[int, int] | None:
        """The size (H, W) the model's target images were brought to in training (None when unknown: images then
        keep their size)."""
        return parse_size(self.meta.target_size or self.run_config.get('target_size'))

    @torch.no_grad()
    def predict(self, item, *, size='original', input_size=None, flip: bool = False,
                scales: str | Sequence[float] = (1.,)) -> tuple:
        """What `DADALearner.predict` returns, for one image item (a path, PIL image or numpy array, read by
        `data.image_to_rgb`'s rule): fastai's triple `((TensorClassMap (H, W), TensorDepth (1, H, W)),
        (class ids (H, W) int64, inverse depth (1, H, W)), (class probabilities (C, H, W), inverse depth
        (1, H, W)))` on the CPU, the depth None without the depth block. The image is brought to `input_size`
        (default: `self.input_size`, the training target size) as the model's training target was (`meta['fit']`:
        stretched, or kept in aspect and padded); `size`: 'original' (the image's own size, the padding cut off
        before resizing back), 'input' or an (H, W). `flip` and `scales`: test-time augmentation (`forward`)."""
        rgb = image_to_rgb(item)
        fit = self.meta.fit
        x = self.preprocess(rgb, parse_size(input_size) if input_size is not None else self.input_size, fit)
        seg, depth = self.forward(x, flip, scales)
        in_hw = tuple(x.shape[-2:])
        if size == 'original':
            out_hw = rgb.shape[:2]
        else:
            out_hw, fit = (in_hw if size == 'input' else parse_size(size)), 'stretch'
        seg = prediction_to_size(seg.float(), in_hw, out_hw, fit)
        depth = prediction_to_size(depth.float(), in_hw, out_hw, fit)[0].cpu() if depth is not None else None
        probs = torch.softmax(seg, 1)
        return prediction_triple(probs[0].cpu(), probs.argmax(1)[0].cpu(), depth, self.protocol)


def load_model(path: str | Path, device: str | torch.device = 'auto', precision: str = 'fp32',
               network: str = 'student') -> LoadedModel:
    """Rebuild the segmenter of a run folder, checkpoint or export and load its weights (safely). `precision`:
    'fp32' (default), or 'bf16'/'fp16' autocast (faster on GPUs and on CPUs with native bf16). `network`: the
    student (what every run evaluates and exports), or a self-training run's mean teacher (from its checkpoint)."""
    device = resolve_device(device) if isinstance(device, str) else device
    sd, meta = load_inference_file(path, network)
    from .config import arch_rule, check_option, train_options
    from .protocols import PROTOCOLS
    if meta['n_classes'] not in PROTOCOLS or arch_rule(meta['arch']) is not None:
        raise CheckpointError(f'{path}: its metadata describes an unknown model ({meta["n_classes"]} classes, '
                              f'architecture {meta["arch"]!r}); a damaged file or one of another program')
    kwargs = {}
    if meta.get('arch') == REFERENCE_ARCH and meta.get('layers'):
        kwargs['layers'] = tuple(check_option('layers', *train_options()['layers'], meta['layers'], f' in {path}'))
    model = DADA(meta['n_classes'], arch=meta['arch'], pretrained=False, depth_block=meta['depth_block'],
                 feature_fusion=meta['feature_fusion'], **kwargs)
    try:
        model.load_state_dict(sd)
    except RuntimeError as e:
        raise CheckpointError(f'{path}: weights do not fit the model they describe ({" ".join(str(e).split())[:200]})') from None
    run_dir = Path(path) if Path(path).is_dir() else Path(path).parent
    info = RunMeta.from_dict({**meta, 'layers': kwargs.get('layers')}, config=_run_config(run_dir))
    return LoadedModel(model, info, device, precision)


def _run_config(run_dir: Path) -> dict:
    """The run configuration beside a model (config.yaml; {} when there is none), as a mapping."""
    path = RunFolder(run_dir).config
    if not path.is_file():
        return {}
    from .config import check_option, load_preset, train_options
    try:
        values = load_preset(path)
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f'cannot read {path} ({type(e).__name__}); restore it, or move it away and give --target '
                          'and --size') from None
    specs = train_options()
    for name in ('source', 'target', 'target_size', 'classes', 'toy'):  # what evaluation and prediction use
        if name in values:
            values[name] = check_option(name, *specs[name], values[name], f' in {path}')
    return values


def evaluate_model(model: str | Path, target: str | None = None, classes: int | None = None,
                   target_size: str | None = None, baseline: str | Path | None = None,
                   max_images: int | None = None, device: str = 'auto', precision: str = 'fp32',
                   network: str = 'student', flip: bool = False, scales: str | Sequence[float] = (1.,)) -> dict:
    """Evaluate on the target's labelled val split at the label's full resolution, by default in IEEE float32 as
    the reference (no TF32 on CUDA; `precision='bf16'` or 'fp16' autocasts): {'miou', 'miou13', 'per_class',
    'images', 'target', 'negative_transfer' (with a baseline), 'depth' (when the target has depth and the model
    predicts it: `metrics.DepthAccuracy.result`)}. It runs the evaluation that training runs
    (`DADALearner.evaluate`, through `DADALearner.for_evaluation`), on the DataLoader validation reads
    (`data.target_dataloader`). `network='teacher'` evaluates a self-training run's mean teacher instead of its
    student. `flip` and `scales` (e.g. (0.75, 1, 1.25)) turn on test-time augmentation, for the baseline too: the
    softmax averaged over horizontal flips and image scales (off by default, as the paper's protocol)."""
    scales = check_scales(scales)  # a bad value fails before the model loads
    lm = load_model(model, device, precision, network)
    n_classes = classes or lm.protocol.n_classes
    if n_classes != lm.protocol.n_classes:
        raise CheckpointError(f'{model} predicts {lm.protocol.n_classes} classes, not --classes {n_classes}')
    target = target or lm.run_config.get('target')
    if target is None:
        from .toy import ToyConfig, toy_specs
        if lm.run_config and lm.run_config.get('source') is None:
            target = toy_specs(cfg=ToyConfig(**(lm.run_config.get('toy') or {})))[1]
        else:
            raise DatasetError('no --target given and the model has no run configuration naming one; '
                               'pass --target KIND:DIR (check it with dada-fastai data-report)')
    size = parse_size(target_size or lm.run_config.get('target_size'))
    base = load_model(baseline, device, precision) if baseline else None
    if base is not None and base.protocol.n_classes != n_classes:
        raise CheckpointError(f'baseline {baseline} predicts {base.protocol.n_classes} classes, not {n_classes}')
    ds = open_dataset(target, n_classes=n_classes)
    items = [DataItem(ds, s) for s in ds.samples('val')[:max_images]]
    res = _evaluate_loaded(lm, ds, items, size, per_image=base is not None, flip=flip, scales=scales)
    out = {k: v for k, v in res.items() if k != 'per_image_miou'}
    out |= {'images': len(items), 'target': str(target)}
    if flip or scales != (1.,):
        out['tta'] = {'flip': bool(flip), 'scales': list(scales)}
    if base is not None:
        theirs = _evaluate_loaded(base, ds, items, size, per_image=True, flip=flip, scales=scales)['per_image_miou']
        worse = sum(a < b for a, b in zip(res['per_image_miou'], theirs))  # an image without a class in common: no
        out['negative_transfer'] = 100. * worse / max(len(items), 1)
    return out


def _evaluate_loaded(lm: LoadedModel, ds, items: list, size, per_image: bool, flip: bool = False,
                     scales: Sequence[float] = (1.,)) -> dict:
    """`DADALearner.evaluate` of a loaded model on `items` of the target dataset `ds`, read as validation reads them,
    with the model's own normalisation (and test-time augmentation with `flip` or `scales`)."""
    dl = target_dataloader(ds, items, lm.protocol, size, lm.norm, device=lm.device)
    learn = DADALearner.for_evaluation(lm.model, dl, lm.meta, lm.precision)
    return learn.evaluate(per_image=per_image, flip=flip, scales=scales)


def _expand_inputs(inputs) -> list[Path]:
    files = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files += sorted(f for f in p.rglob('*') if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            files.append(p)
        else:
            raise DatasetError(f'input not found: {p}')
    if not files:
        raise DatasetError(f'no images ({", ".join(IMAGE_SUFFIXES)}) found in {", ".join(map(str, inputs))}')
    return files


def _distinct_stems(files: list[Path]) -> None:
    """Refuse two images with one name: their outputs, named from it, would overwrite each other."""
    seen = {}
    for f in files:
        if f.stem in seen:
            raise DatasetError(f'two images named {f.stem}: {seen[f.stem]} and {f}; their predictions would overwrite '
                               'each other: predict them into separate --out folders')
        seen[f.stem] = f


def predict_files(model: str | Path, inputs, out: str | Path, size: str | None = None, device: str = 'auto',
                  precision: str = 'fp32', formats: str | Sequence[str] = ('color',), flip: bool = False,
                  scales: str | Sequence[float] = (1.,)) -> list[Path]:
    """Predict each image (files, or folders searched recursively) and write the `formats` of `outputs` into `out`,
    each file named from the image's own stem: 'color' (<stem>_seg.png and <stem>_depth.png, near = warm; the
    default), 'overlay', 'train-ids', 'label-ids' (Cityscapes labelIds, for the benchmark), 'depth' (16-bit, with
    depth_encoding.json) and 'npy'; at each image's own size. `flip` and `scales`: test-time augmentation. Returns the
    files written."""
    formats, scales = parse_formats(formats), check_scales(scales)
    files = _expand_inputs(inputs)  # a wrong path fails before the model loads
    lm = load_model(model, device, precision)
    encoding = check_formats(formats, lm.run_config, lm.meta.depth_block, str(model))
    _distinct_stems(files)  # after the model's own problems, which a user fixes first
    size = parse_size(size or lm.run_config.get('target_size'))
    out = Path(out)
    written = []
    for n, f in enumerate(files):
        rgb = image_to_rgb(f)  # read as the datasets read images
        _, (ids, depth), (probs, _) = lm.predict(rgb, input_size=size, flip=flip, scales=scales)
        try:
            if n == 0 and encoding is not None:
                written.append(write_depth_encoding(out, encoding))
            written += write_outputs(out, f.stem, formats, lm.protocol, ids.numpy(), probs.numpy(),
                                     depth[0].numpy() if depth is not None else None, rgb, encoding)
        except DiskFullError as e:
            raise DiskFullError(f'{e}; the predictions of {n} of {len(files)} images are complete in {out}: free some '
                                'space and run predict again') from None
    return written


def _default_export(model: Path, fmt: str) -> Path:
    """Where `export` writes by default: a run folder's export.onnx (export.safetensors), also for a model file of a
    run folder (its export or a checkpoint); beside any other model file, under its name."""
    folder = RunFolder(model if model.is_dir() else model.parent)
    if model.is_dir() or model.name in (EXPORT_FILE, LAST_CHECKPOINT, PREV_CHECKPOINT):
        return folder.onnx if fmt == 'onnx' else folder.export
    return model.with_suffix('.onnx' if fmt == 'onnx' else '.safetensors')


def export_model(model: str | Path, format: str = 'onnx', out: str | Path | None = None) -> Path:
    """Export the segmenter of a run folder, checkpoint or export: 'onnx' (`onnx_export.export_onnx`: inputs of any
    size, outputs `logits` and `inverse_depth`, the preprocessing in its metadata; default RUN/export.onnx) or
    'safetensors' (the package's own export, written again: default RUN/export.safetensors). Returns the file."""
    if format not in EXPORT_FORMATS:
        raise ConfigError(f'unknown export format {format!r}; valid: {", ".join(EXPORT_FORMATS)}')
    lm = load_model(model, 'cpu')
    path = Path(out) if out is not None else _default_export(Path(model), format)
    if format == 'safetensors':
        return save_export(lm.model, lm.meta, path)
    from .onnx_export import export_onnx
    return export_onnx(lm.model, lm.meta, path, lm.run_config)
