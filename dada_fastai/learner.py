"""`dada_learner()`: the DADA model, its discriminators and callbacks in a fastai Learner; the methods and
ablations of the paper as configurations; evaluation (with the metrics of `metrics`); `show_results`."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from fastai.callback.progress import ProgressCallback
from fastai.callback.schedule import ParamScheduler, SchedCos, combine_scheds, combined_cos
from fastai.data.core import DataLoaders
from fastai.callback.core import Callback, CancelFitException
from fastai.learner import Learner
from fastai.optimizer import OptimWrapper
from fastcore.foundation import L
from torch import nn

from .callbacks import (CudaBackend, DADATrainer, DeviceMixedPrecision, FrozenBatchNorm, HeadLR, IterBudget,
                        MeanTeacher, NonFiniteGuard, SelfTraining, SetEpoch, TableProgress,
                        ThrottledProgress, cpu_has_native_bf16, default_precision, poly_decay,  # noqa: F401
                        pseudo_label_reports, self_training_terms)
from .metrics import (ConfusionMatrix, DepthAccuracy, DepthDelta1, MeanIoU, PerImageMIoU, confusion_matrix,  # noqa: F401
                      finite_mean, iou_from_confusion)
from .losses import Lambdas, source_loss, upsample
from .meta import RunMeta
from .methods import METHODS, MethodConfig, method_config  # noqa: F401 (public here too)
from .model import DADA, Discriminator, param_groups
from .prediction import (GatherSegDepth, TestTimeAugmentation, assemble, item_fit, prediction_to_size,  # noqa: F401
                         prediction_triple)
from .protocols import ClassProtocol, get_protocol
from .run_folder import EXPORT_FILE

__all__ = ['MethodConfig', 'METHODS', 'method_config', 'DADALoss', 'ConfusionMatrix', 'MeanIoU', 'finite_mean',
           'confusion_matrix', 'iou_from_confusion', 'DADALearner', 'dada_learner', 'sgd_reference', 'adamw',
           'OPTIMIZERS', 'default_precision', 'cpu_has_native_bf16', 'prediction_to_size', 'prediction_triple',
           'run_iteration', 'IterationResult']


# ---------------------------------------------------------------------------------------------------------
# The loss
# ---------------------------------------------------------------------------------------------------------
class DADALoss:
    """Source loss for fastai: predictions (seg, depth) upsampled to the label size, then
    lambda_seg CE + lambda_depth berHu; on validation batches (no depth) the CE alone. `depth_scale`
    multiplies the inverse-depth targets (1 in the reference: SYNTHIA's 65536 / (cm + 1), up to ~650 near
    the camera), so that the depth head predicts `depth_scale` x that."""

    def __init__(self, lambdas: Lambdas = Lambdas(), depth_scale: float = 1.):
        self.lambdas, self.depth_scale, self.parts = lambdas, depth_scale, {}

    def __call__(self, pred, mask, depth=None):
        seg, dep = pred
        size = mask.shape[-2:]
        up_dep = upsample(dep, size) if dep is not None and depth is not None else None
        if depth is not None and self.depth_scale != 1:
            depth = depth * self.depth_scale
        total, self.parts = source_loss(upsample(seg, size), up_dep, mask, depth, self.lambdas)
        return total

    def activation(self, pred):
        return F.softmax(pred[0], dim=1), pred[1]

    def decodes(self, pred):
        return pred[0].argmax(1), pred[1]


# ---------------------------------------------------------------------------------------------------------
# The Learner
# ---------------------------------------------------------------------------------------------------------
def sgd_reference(params, lr: float = 2.5e-4, momentum: float = 0.9, wd: float = 5e-4, **kwargs) -> OptimWrapper:
    """The reference's optimizer: PyTorch SGD with momentum 0.9 and (coupled) weight decay 5e-4."""
    return OptimWrapper(params, torch.optim.SGD, lr=lr, momentum=momentum, weight_decay=wd)


def adamw(params, lr: float = 1e-3, mom: float = 0.9, sqr_mom: float = 0.99, eps: float = 1e-8, wd: float = 5e-4,
          **kwargs) -> OptimWrapper:
    """PyTorch AdamW (decoupled weight decay; `mom`, `sqr_mom`: its betas, so that fastai's schedules set them)."""
    return OptimWrapper(params, torch.optim.AdamW, lr=lr, betas=(mom, sqr_mom), eps=eps, weight_decay=wd)


OPTIMIZERS = {'sgd': sgd_reference, 'adamw': adamw}  # the segmenter's, by the name `--opt` takes


class DADALearner(Learner):
    """A fastai Learner for DADA: `learn.dada` is the adversarial callback (discriminators, their
    optimizer, the loss terms); `fit_iters` trains for a number of iterations; `show_results` shows target
    image, ground truth, prediction and predicted depth."""

    def _split(self, b):
        # training batches have two inputs (source and target images), validation batches one
        i = getattr(self.dl, 'n_inp', 1 if len(b) == 1 else len(b) - 1)
        self.xb, self.yb = b[:i], b[i:]
        self.depth_yb = None
        if i == 1 and len(b) == 3:  # a validation batch with the target's depth: for the depth metrics only
            self.yb, self.depth_yb = b[1:2], b[2]

    cuda_backend = CudaBackend(tf32=False)  # TF32 and cuDNN settings while fitting and validating

    def fit(self, *args, **kwargs):
        """fastai's `fit`, under the Learner's CUDA backend settings (the process's own come back after it, also
        when an error ends the fit)."""
        with self.cuda_backend.applied():
            return super().fit(*args, **kwargs)

    def validation_context(self, cbs=None, inner: bool = False):
        """fastai's validation context (`validate`, `get_preds`), under the Learner's CUDA backend settings."""
        ctx = super().validation_context(cbs=cbs, inner=inner)
        ctx.insert(0, self.cuda_backend.applied())
        return ctx

    meta: RunMeta  # what describes the model and its run (`dada_learner` sets it once)
    confusion: ConfusionMatrix  # the validation's confusion matrix (read by `evaluate`, `per_class_iou`)
    depth_accuracy: DepthAccuracy  # the validation's depth metrics, on targets that ship depth

    @property
    def protocol(self) -> ClassProtocol:
        """The class set the model predicts (`meta.protocol`)."""
        return self.meta.protocol

    @property
    def run_config(self) -> dict:
        """The run's configuration (`meta.config`; {} for a learner built outside a run)."""
        return dict(self.meta.config or {})

    @property
    def dada_config(self) -> dict:
        """`meta` and the metrics as the dictionary earlier versions kept (read-only)."""
        m = self.meta
        return {'protocol': m.protocol, 'method': m.method, 'arch': m.arch, 'lambdas': self.loss_func.lambdas,
                'confusion': self.confusion, 'depth': self.depth_accuracy, 'layers': list(m.layers or ()) or None,
                'mode': m.mode, 'bn': m.bn}

    def _fit_scheduled(self, n_epoch: int, lr, scheds, cbs=None, **kwargs) -> None:
        """`fit` under the parameter schedules `scheds(peak)`, `peak` being the groups' rates for `lr` (`learn.lr`
        when None), with the fit started at that peak. fastai's schedule methods call `fit` without a rate, which
        resets it to `learn.lr`; the discriminators read the rate the fit starts at as the schedule's peak."""
        if self.opt is None:
            self.create_opt()
        self.opt.set_hyper('lr', self.lr if lr is None else lr)
        peak = np.array([h['lr'] for h in self.opt.hypers])
        self.fit(n_epoch, peak, cbs=ParamScheduler(scheds(peak)) + L(cbs), **kwargs)

    def fit_one_cycle(self, n_epoch: int, lr_max=None, div: float = 25., div_final: float = 1e5,
                      pct_start: float = 0.25, wd=None, moms=None, cbs=None, reset_opt: bool = False,
                      start_epoch: int = 0) -> None:
        """fastai's `fit_one_cycle`, with the fit started at the cycle's peak `lr_max` (fastai's starts it at
        `learn.lr`): the discriminators' rate is `d_lr` times the segmenter's rate over that peak."""
        moms = self.moms if moms is None else moms
        self._fit_scheduled(n_epoch, lr_max, lambda peak: {
            'lr': combined_cos(pct_start, peak / div, peak, peak / div_final), 'mom': combined_cos(pct_start, *moms)},
            cbs, reset_opt=reset_opt, wd=wd, start_epoch=start_epoch)

    def fit_flat_cos(self, n_epoch: int, lr=None, div_final: float = 1e5, pct_start: float = 0.75, wd=None,
                     cbs=None, reset_opt: bool = False, start_epoch: int = 0) -> None:
        """fastai's `fit_flat_cos`, started at its flat rate `lr` and from `start_epoch` (fastai's starts at
        `learn.lr` and drops `start_epoch`, so a resumed run would train its first epochs again)."""
        self._fit_scheduled(n_epoch, lr, lambda peak: {'lr': combined_cos(pct_start, peak, peak, peak / div_final)},
                            cbs, reset_opt=reset_opt, wd=wd, start_epoch=start_epoch)

    def fit_sgdr(self, n_cycles: int, cycle_len: int, lr_max=None, cycle_mult: int = 2, cbs=None,
                 reset_opt: bool = False, wd=None, start_epoch: int = 0) -> None:
        """fastai's `fit_sgdr` (cosine restarts, each cycle `cycle_mult` times longer), with the fit started at the
        cycles' peak `lr_max` (fastai's starts it at `learn.lr`), so that the discriminators follow it too."""
        n_epoch = sum(cycle_len * cycle_mult ** i for i in range(n_cycles))  # fastai's divides by cycle_mult - 1
        pcts = [cycle_len * cycle_mult ** i / n_epoch for i in range(n_cycles)]
        self._fit_scheduled(n_epoch, lr_max, lambda peak: {'lr': combine_scheds(pcts, [SchedCos(peak, 0)] * n_cycles)},
                            cbs, reset_opt=reset_opt, wd=wd, start_epoch=start_epoch)

    def fit_iters(self, n_iters: int, lr: float | None = None, schedule: str = 'poly', power: float = 0.9,
                  cbs=None, **kwargs) -> None:
        """Train for exactly `n_iters` iterations with `schedule`: 'poly' (the reference: lr (1 - t)^0.9),
        'one_cycle', 'flat_cos' or 'constant'."""
        from fastai.torch_core import num_distrib
        n_per_epoch = -(-len(self.dls.train) // max(num_distrib(), 1))  # each process's share when distributed
        if n_per_epoch == 0:
            raise ValueError('the training DataLoader is empty: check the source dataset and the batch size')
        n_epoch = -(-n_iters // n_per_epoch)
        cbs = [IterBudget(n_iters)] + list(cbs or [])
        lr = self.lr if lr is None else lr
        if schedule == 'poly':
            if self.opt is None:
                self.create_opt()
            self.fit(n_epoch, lr, cbs=cbs + [ParamScheduler({'lr': poly_decay(lr, power)})], **kwargs)
        elif schedule == 'one_cycle':
            self.fit_one_cycle(n_epoch, lr, cbs=cbs, **kwargs)
        elif schedule == 'flat_cos':
            self.fit_flat_cos(n_epoch, lr, cbs=cbs, **kwargs)
        elif schedule == 'constant':
            self.fit(n_epoch, lr, cbs=cbs, **kwargs)
        else:
            raise ValueError(f"unknown schedule {schedule!r}; valid: poly, one_cycle, flat_cos, constant")

    def export(self, fname: str = EXPORT_FILE, **kwargs):
        """Export the segmenter for inference as safetensors with its metadata (fastai's own export pickles
        the whole Learner; this one cannot run code when loaded). Load it with
        `dada_fastai.inference.load_model`."""
        from .checkpoint import export_inference
        return export_inference(self, self.path / fname)

    def per_class_iou(self) -> dict[str, float]:
        """Per-class IoU (%) of the last validation."""
        return self.confusion.per_class()

    def evaluate(self, dl=None, per_image: bool = False, network: str = 'student', flip: bool = False,
                 scales: Sequence[float] = (1.,)) -> dict:
        """Validate on `dl` (default: the target validation set): {'miou', 'miou13', 'per_class'} in percent,
        and 'depth' (`metrics.DepthAccuracy.result`: δ<1.25, abs-rel, a constant's) when the set has depth; with
        `per_image`, also 'per_image_miou', each image's mIoU (for the negative transfer rate). The one evaluation:
        training's validations, the end of a run and `dada-fastai evaluate` (`for_evaluation`) all run it.
        `network='teacher'` evaluates a self-training run's mean teacher instead of the student (the network a run
        evaluates and exports). `flip` and `scales` turn on test-time augmentation (`prediction.TestTimeAugmentation`:
        the softmax averaged over flips and scales; off by default, as the paper's protocol)."""
        images = PerImageMIoU(self.protocol) if per_image else None
        with self._evaluated(network, flip, scales):
            self.validate(dl=dl, cbs=[images] if images is not None else None)
        res = self.confusion.scores()
        depth = self.depth_accuracy.result()
        if depth is not None:
            res['depth'] = depth
        if images is not None:
            res['per_image_miou'] = images.values
        return res

    @contextmanager
    def _evaluated(self, network: str, flip: bool = False, scales: Sequence[float] = (1.,)):
        """The model as `network` inside the block (the student itself, or the mean teacher in its place), under
        test-time augmentation when `flip` or `scales` ask for it."""
        if network not in ('student', 'teacher'):
            raise ValueError(f"unknown network {network!r}; valid: student, teacher")
        model = self.model
        if network == 'teacher':
            model = getattr(getattr(self, 'teacher', None), 'model', None)
            if model is None:
                raise ValueError('no teacher to evaluate: not a self-training learner (dacs, dada_st), or not trained '
                                 'yet')
        if flip or tuple(scales) != (1.,):
            model = TestTimeAugmentation(model, flip, scales)
        student, self.model = self.model, model
        try:
            yield
        finally:
            self.model = student

    @classmethod
    def for_evaluation(cls, model: nn.Module, dl, meta: RunMeta, precision: str = 'fp32') -> DADALearner:
        """A Learner that evaluates a trained `model` (described by `meta`) on `dl`, a labelled target DataLoader
        (`data.target_dataloader`), exactly as training validates: what `dada-fastai evaluate` runs. In IEEE float32
        as the reference evaluated (no TF32 on CUDA), or under `precision` ('bf16', 'fp16') autocast."""
        if precision not in ('fp32', 'bf16', 'fp16'):
            raise ValueError(f"unknown precision {precision!r}; valid: fp32, bf16, fp16")
        cm, depth_acc, metrics = _validation_metrics(meta.protocol)
        cbs = [DeviceMixedPrecision(amp_mode=precision)] if precision != 'fp32' else []
        learn = cls(DataLoaders(dl, dl, device=dl.device), model, loss_func=DADALoss(), metrics=metrics, cbs=cbs)
        learn.remove_cb(ProgressCallback)  # a result, not a bar: `--json` prints one object
        learn.cuda_backend = CudaBackend(tf32=False)
        learn.confusion, learn.depth_accuracy, learn.meta = cm, depth_acc, meta
        return learn

    def predict_batch(self, x: torch.Tensor, size: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(class map (B,H,W), inverse depth (B,1,H,W) or None) for normalised images, upsampled to `size`."""
        self.model.eval()
        with torch.no_grad():
            seg, depth = self.model(x.to(self.dls.device))
        size = tuple(size or x.shape[-2:])
        return upsample(seg, size).argmax(1), (upsample(depth, size) if depth is not None else None)

    def show_results(self, ds_idx: int = 1, dl=None, max_n: int = 4, figsize=None, **kwargs):
        """Target image, ground truth, prediction and predicted depth (near = warm), one row per image; for a
        self-training run also the teacher's pseudo-label of each image, and a last row with what the student was
        taught on its last training batch (`plots.show_results`)."""
        from .plots import show_results
        dl = dl if dl is not None else self.dls[ds_idx].new(shuffle=False, drop_last=False, bs=1)
        return show_results(self, dl, max_n, figsize)

    # -- fastai's inference calls -------------------------------------------------------------------------
    def get_preds(self, ds_idx: int = 1, dl=None, with_input: bool = False, with_decoded: bool = False,
                  with_loss: bool = False, act=None, inner: bool = False, reorder: bool = True, cbs=None,
                  size='input', **kwargs) -> tuple:
        """fastai's `get_preds` for the two outputs of DADA, typically on `learn.dls.test_dl(items)`. Returns
        `(preds, targs)`, fastai's order with `with_input` first, `with_decoded` after the targets and `with_loss`
        last, where

        - `preds` is `(probs, depth)`: class probabilities (N, C, H, W) (softmax of the logits, or `act`'s) and
          predicted inverse depth (N, 1, H, W) (None for a model without the depth block);
        - the decoded predictions are `(class ids (N, H, W) int64, depth)`;
        - `targs` are the DataLoader's targets (None for a test DataLoader).

        The model predicts at a fraction of its input; its logits and depth are upsampled bilinearly
        (align_corners=True, as `evaluate` does) to `size`: 'input' (the model's input size: the target size
        the images were brought to), an (H, W), or 'original': each image's own size, the padding cut off where
        the images keep their aspect ratio, as the `predict` command writes them; then `probs`, `depth` and the
        decoded tensors are `L`s of (C, h, w), (1, h, w) and (h, w) tensors, one per image."""
        from fastai.data.load import DataLoader
        from fastai.learner import _ConstantFunc
        from fastai.torch_core import nested_reorder
        from fastcore.foundation import L
        if size not in ('input', 'original'):
            from .data import parse_size
            size = parse_size(size)
        if dl is None:
            dl = self.dls[ds_idx].new(shuffle=False, drop_last=False)
        elif isinstance(dl, DataLoader) and dl.drop_last:
            dl = dl.new(shuffle=False, drop_last=False)
        idxs = None
        if reorder and hasattr(dl, 'get_idxs'):  # as fastai does, with the order kept for the predictions too
            idxs = list(dl.get_idxs())
            dl = dl.new(get_idxs=_ConstantFunc(idxs))
        kwargs.pop('with_preds', None)
        gather = GatherSegDepth()
        res = list(super().get_preds(dl=dl, with_input=with_input, with_loss=with_loss, inner=inner, reorder=False,
                                     cbs=L(cbs) + [gather], with_preds=False, **kwargs))
        pos = 1 if with_input else 0  # fastai's slot of the predictions, left empty (with_preds=False)
        act = act if act is not None else getattr(self.loss_func, 'activation', lambda p: p)
        decodes = getattr(self.loss_func, 'decodes', lambda p: p)
        from .data import image_item_size
        items = getattr(getattr(dl, 'dataset', None), 'items', None)
        if size == 'original' and items is None:
            raise ValueError("size='original' needs a DataLoader of image items to know their sizes; "
                             'pass dl=learn.dls.test_dl(items)')
        chunks, n = [], 0  # (activated, decoded) per batch, or per image for 'original'
        for seg, depth, in_hw in gather.batches:
            if size == 'original':
                for j in range(len(seg)):
                    item = items[idxs[n] if idxs is not None else n]
                    chunks.append(self._activate(seg[j:j + 1], None if depth is None else depth[j:j + 1], act,
                                                 decodes, in_hw, image_item_size(item), item_fit(item, self.dls)))
                    n += 1
            else:
                chunks.append(self._activate(seg, depth, act, decodes, in_hw, size if size != 'input' else in_hw))
        preds, dec = assemble([c[0] for c in chunks], size), assemble([c[1] for c in chunks], size)
        if idxs is not None:
            order = torch.as_tensor(idxs).argsort()
            res = [nested_reorder(r, order) for r in res]
            preds, dec = nested_reorder(preds, order), nested_reorder(dec, order)
        res[pos] = preds
        if with_decoded:
            res.insert(pos + 2, dec)
        return tuple(res)

    @staticmethod
    def _activate(seg, depth, act, decodes, in_hw, out_hw, fit='stretch'):
        """(activated, decoded) predictions of one batch, resized from the model's output to `out_hw`."""
        seg = prediction_to_size(seg.float(), in_hw, out_hw, fit)
        depth = prediction_to_size(depth.float(), in_hw, out_hw, fit) if depth is not None else None
        pred = tuple(act((seg, depth)))
        return pred, tuple(decodes(pred))

    def predict(self, item, rm_type_tfms=None, with_input: bool = False, size='original'):
        """fastai's `predict` for one image (a path, PIL image or numpy array: see `data.image_to_rgb`), read and
        normalised as the target's validation images. Returns fastai's triple `(decoded, decoded_preds, preds)`
        for the two outputs of DADA:

        - `decoded`: `(class map, depth)`: a `TensorClassMap` (H, W) (a `TensorMask` whose `show` draws the
          protocol's colours) and a `TensorDepth` (1, H, W) (`show`: near is warm);
        - `decoded_preds`: `(class ids (H, W) int64, inverse depth (1, H, W))`;
        - `preds`: `(class probabilities (C, H, W), inverse depth (1, H, W))`;

        the depth None for a model without the depth block. `size`: 'original' (default: the image's own size,
        as the `predict` command writes it), 'input' (the model's input size) or an (H, W). `with_input` puts the
        decoded input image (at the model's input size) first. `dada_fastai.inference.LoadedModel.predict`
        returns the same."""
        dl = self.dls.test_dl([item], rm_type_tfms=0 if rm_type_tfms is None else rm_type_tfms, num_workers=0)
        inp, (probs, depth), _, (ids, _) = self.get_preds(dl=dl, with_input=True, with_decoded=True, size=size)
        res = prediction_triple(probs[0], ids[0], None if depth is None else depth[0], self.protocol)
        return ((dl.decode((inp,))[0][0],) + res) if with_input else res

    def summary(self):
        """fastai's `summary` for DADA: the segmenter layer by layer on the first source image of one training
        batch (both domains) with its output shapes on the batch's target image, each discriminator layer by
        layer on the map it sees, the optimizers, the loss function and the callbacks."""
        from fastai.callback.hook import module_summary
        from fastcore.basics import PrettyString
        from .losses import adaptation_map
        b = self.dls.train.one_batch()
        n_inp = getattr(self.dls.train, 'n_inp', 1)
        x_src, x_trg = b[0], (b[1] if n_inp > 1 else b[0])
        with self.removed_cbs(self.cbs.filter(lambda cb: isinstance(cb, ProgressCallback))):  # the same back after
            res = f'Segmenter on the source images\n{module_summary(self, x_src)}'
        self.model.eval()
        with torch.no_grad():
            seg_t, depth_t = self.model(x_trg[:1])
            size_t = x_trg.shape[-2:]
            up_seg = upsample(seg_t.float(), size_t)
            up_depth = upsample(depth_t.float(), size_t) if depth_t is not None else None
        shape = lambda t: ' x '.join(str(v) for v in t.shape)  # noqa: E731
        res += (f'Segmenter on the target images (Input shape: {shape(x_trg[:1])}): segmentation {shape(seg_t)}, '
                f'inverse depth {shape(depth_t) if depth_t is not None else "none (no depth block)"}\n\n')
        discs = self.dada.discriminators if hasattr(self, 'dada') else {}
        for kind, d in discs.items():
            fmap = adaptation_map(up_seg, up_depth, kind)
            d_learn = Learner(self.dls, d.to(fmap.device), loss_func=lambda *a: torch.zeros(()))
            with d_learn.removed_cbs(d_learn.cbs.filter(lambda cb: isinstance(cb, ProgressCallback))):
                res += f'Discriminator on the {kind} map of the target images\n{module_summary(d_learn, fmap)}'
        if not discs:
            res += 'No discriminator (trained on the source alone)\n\n'
        res += f'Optimizer used: {self.opt_func}\n'
        if discs:
            res += f'Discriminators\' optimizer: Adam (lr {self.dada.d_lr}, betas {self.dada.d_betas})\n'
        res += f'Loss function: {self.loss_func}\n\n'
        if self.opt is not None:
            res += 'Model ' + ('unfrozen\n\n' if self.opt.frozen_idx == 0 else
                               f'frozen up to parameter group #{self.opt.frozen_idx}\n\n')
        res += 'Callbacks:\n' + '\n'.join(f'  - {cb}' for cb in self.cbs.sorted('order'))
        return PrettyString(res)


@dataclass
class IterationResult:
    """Everything one iteration computed: raw predictions, adapted maps and the loss terms (detached)."""
    seg_src: torch.Tensor
    depth_src: torch.Tensor | None
    seg_trg: torch.Tensor
    depth_trg: torch.Tensor | None
    maps_src: dict[str, torch.Tensor] = field(default_factory=dict)
    maps_trg: dict[str, torch.Tensor] = field(default_factory=dict)
    losses: dict[str, torch.Tensor] = field(default_factory=dict)


class _KeepIteration(Callback):
    """Keep what the training iteration computed (predictions, the discriminators' maps, the loss terms) and end
    the fit before any optimizer steps or gradients are zeroed."""
    order = DADATrainer.order + 1

    def before_step(self):
        dada = self.learn.dada
        seg_t, depth_t = dada.pred_t if dada.pred_t is not None else (None, None)
        self.result = IterationResult(*self.learn.pred, seg_t, depth_t, dict(dada.maps_s), dict(dada.maps_t),
                                      _iteration_losses(dada))
        raise CancelFitException()


def _iteration_losses(dada: DADATrainer) -> dict[str, torch.Tensor]:
    """`DADATrainer`'s loss terms under `IterationResult`'s names: seg_src, depth_src, adv_KIND, d_src_KIND, ..."""
    losses = {f'{k}_src': dada.batch_terms[k] for k in ('seg', 'depth') if k in dada.batch_terms}
    for kind in dada.discriminators:
        sfx = '' if len(dada.discriminators) == 1 else f'_{kind}'
        losses |= {f'{k}_{kind}': dada.batch_terms[f'{k}{sfx}'] for k in ('adv', 'd_src', 'd_trg')}
    return losses


def run_iteration(model: nn.Module, discriminators: dict[str, nn.Module], x_src: torch.Tensor, labels: torch.Tensor,
                  depth_target: torch.Tensor | None, x_trg: torch.Tensor, lambdas: Lambdas = Lambdas()) -> IterationResult:
    """One training iteration on one batch, as `DADALearner` trains (faithful mode: the reference's order, four
    backward passes): the forward and backward passes, no optimizer step and no zeroing, so that the gradients are
    the iteration's (added to any already there). `discriminators` maps an adaptation map to its discriminator;
    empty for source-only training (the target image is then not used)."""
    from fastai.data.load import DataLoader
    batch = (x_src, x_trg, labels.long()) + ((depth_target,) if depth_target is not None else ())
    train = DataLoader(range(1), bs=1, create_batch=lambda _: batch)
    train.n_inp = 2  # source and target images
    dls = DataLoaders(train, DataLoader(range(0), bs=1), device=x_src.device)
    keep = _KeepIteration()
    learn = DADALearner(dls, model, loss_func=DADALoss(lambdas), opt_func=sgd_reference,
                        cbs=[DADATrainer(discriminators, lambdas), keep])
    with learn.no_bar(), learn.no_logging():
        learn.fit(1, lr=0.)
    return keep.result


def _validation_metrics(proto: ClassProtocol, depth: bool = False) -> tuple[ConfusionMatrix, DepthAccuracy, list]:
    """The validation's confusion matrix and depth accuracy (read by `evaluate`), and its metrics: mIoU, the 13-class
    mIoU* of the 16-class protocol, and with `depth` the depth's δ<1.25 as a column (validation by validation)."""
    cm, depth_acc = ConfusionMatrix(proto), DepthAccuracy()
    metrics = [MeanIoU(cm, depth=depth_acc)]
    if proto.subset13 is not None:
        metrics.append(MeanIoU(cm, proto.subset13, 'miou13'))
    if depth:
        metrics.append(DepthDelta1(depth_acc))
    return cm, depth_acc, metrics


def dada_learner(dls: DataLoaders, method: str | MethodConfig = 'dada', arch: str = 'resnet101',
                 pretrained: bool = False, weights: str | None = None, n_classes: int | None = None,
                 lambdas: Lambdas | None = None, lr: float = 2.5e-4, wd: float = 5e-4, d_lr: float = 1e-4,
                 ndf: int = 64, head_lr_mult: float = 10., opt_func=None, cbs=None, model: DADA | None = None,
                 backbone_kwargs: dict | None = None, on_nan: str | None = 'stop', mode: str = 'faithful',
                 precision: str | None = None, compile: bool | dict = False, bn: str = 'batch',
                 depth_scale: float = 1., fusion_bias: float | None = None, config: dict | None = None,
                 self_training: dict | None = None, **kwargs) -> DADALearner:
    """Build the DADA segmenter for `dls` (its protocol gives the class count), the discriminators that
    `method` needs, and a `DADALearner` with the reference's recipe as defaults: SGD momentum 0.9, weight
    decay 5e-4, lr 2.5e-4 with the head at 10x, discriminators Adam lr 1e-4 betas (0.9, 0.99).
    `arch` is any timm model name or 'deeplabv2_resnet101' (the reference backbone); `on_nan` ('stop',
    'skip' or None) decides what a non-finite loss does.

    `mode='faithful'` computes what the reference computes, in its order, in IEEE float32 (no TF32 on CUDA).
    `mode='fast'` keeps the losses and gradients but fuses the four backward passes into two, runs in mixed
    precision (`precision`: 'bf16' (default on GPU and on CPUs that compute bf16 natively, `default_precision`),
    'fp16' with a gradient scaler, or 'fp32' (default on other CPUs)),
    lets float32 work use TF32, uses channels_last, optionally `torch.compile` (`compile=True`, or a dict of
    `torch.compile` options), and reads values from the device only every 50 iterations.

    `bn='batch'` (the reference) normalises with each training batch's statistics (BatchNorm in training
    mode, running statistics updated); `bn='frozen'` keeps the frozen-affine BatchNorm layers (all of the
    backbone's) in eval mode (`FrozenBatchNorm`): they normalise with their running statistics, which stay
    as loaded. It departs from the reference, and lets fast mode run source and target in one forward
    when both come at the same size.

    `fusion_bias`: initial bias of the depth block's fusion decoder (None: PyTorch's default, as the reference).

    `config`: the run's configuration (`TrainConfig.to_dict()`), kept in `learn.meta` and written into checkpoints.

    A self-training method (`dacs`, `dada_st`) adds the mean teacher (`learn.teacher`) and the self-training step
    (`learn.self_training`); `self_training` sets them, over `SELF_TRAINING`'s published values: the teacher's EMA
    `alpha`, the confidence `threshold` and whether it weighs an image or a pixel (`confidence`), the `mix` ('class', 'depth', or 'auto': depth-aware where the network predicts
    depth), `lambda_st`, the pasted pixels' `source_weight`, the mixed depth loss's `lambda_depth`, the iteration it
    `start`s at and the strong augmentation (`augment`). Its validations also report the pseudo-labels' accuracy and
    confident share on the target (`pl_acc`, `pl_conf`)."""
    cfg = method_config(method)
    proto = getattr(dls, 'protocol', None) or get_protocol(n_classes or 16)
    n_classes = proto.n_classes
    lambdas = lambdas or Lambdas()
    if model is None:
        model = DADA(n_classes, arch=arch, pretrained=pretrained, weights=weights, depth_block=cfg.depth_block,
                     feature_fusion=cfg.feature_fusion, fusion_bias=fusion_bias, **(backbone_kwargs or {}))
    if mode not in ('faithful', 'fast'):
        raise ValueError(f"unknown mode {mode!r}; valid: faithful, fast")
    fast = mode == 'fast'
    if not fast and (compile or precision not in (None, 'fp32')):
        raise ValueError('precision and compile apply to the fast mode: pass mode="fast" (the faithful mode '
                         'runs in float32, uncompiled)')
    if bn not in ('batch', 'frozen'):
        raise ValueError(f"unknown bn {bn!r}; valid: batch, frozen")
    discs = nn.ModuleDict({k: Discriminator(1 if k == 'depth' else n_classes, ndf) for k in cfg.adapt})
    st = {**SELF_TRAINING, **(self_training or {})} if cfg.self_training else None
    trainer = DADATrainer(discs, lambdas, d_lr=d_lr, fused=fast,
                          extra_terms=self_training_terms(cfg.depth_block) if st else ())
    extra = []
    if st:
        mix = st['mix'] if st['mix'] != 'auto' else ('depth' if cfg.depth_block else 'class')
        extra += [MeanTeacher(st['alpha'], bn), SelfTraining(
            st['threshold'], mix, st['lambda_st'], st['source_weight'], st['lambda_depth'], st['start'], st['augment'],
            depth_scale, fused=fast, confidence=st['confidence'])]
    if on_nan:
        extra.append(NonFiniteGuard(on_nan, every=50 if fast and on_nan == 'stop' else 1))
    if bn == 'frozen':
        extra.append(FrozenBatchNorm())
    if fast:
        extra += _fast_mode(model, discs, dls, precision, compile)
    cm, depth_acc, metrics = _validation_metrics(
        proto, depth=cfg.depth_block and getattr(getattr(dls, 'target_ds', None), 'has_depth', False))
    if st:
        metrics += pseudo_label_reports(st['threshold'])
    metrics += list(trainer.terms.values())
    learn = DADALearner(dls, model, loss_func=DADALoss(lambdas, depth_scale), opt_func=opt_func or partial(sgd_reference, wd=wd),
                        lr=lr, splitter=param_groups, metrics=metrics, wd=wd,
                        cbs=[trainer, HeadLR(head_lr_mult), SetEpoch()] + extra + list(cbs or []), **kwargs)
    learn.remove_cb(ProgressCallback)
    learn.add_cb(ThrottledProgress() if fast else TableProgress())
    learn.cuda_backend = CudaBackend(tf32=fast)
    learn.confusion, learn.depth_accuracy = cm, depth_acc
    norm = getattr(dls, 'norm', None)  # dls of `dada_dataloaders` describe their data; others may not
    learn.meta = RunMeta(n_classes, arch, cfg.depth_block, cfg.feature_fusion, cfg.adapt,
                         layers=(backbone_kwargs or {}).get('layers'), norm=norm if isinstance(norm, str) else None,
                         source_size=getattr(dls, 'source_size', None), target_size=getattr(dls, 'target_size', None),
                         fit=getattr(getattr(dls, 'target_ds', None), 'fit', 'stretch'), mode=mode, bn=bn,
                         self_training=cfg.self_training, config=config)
    return learn


SELF_TRAINING = dict(alpha=0.99, threshold=0.968, mix='auto', lambda_st=1., source_weight=1., lambda_depth=1e-4,
                     start=0, augment=True, confidence='image')  # DACS's published recipe (the depth loss: CorDA's tenth)



def _fast_mode(model: nn.Module, discs: nn.ModuleDict, dls, precision: str | None, compile: bool | dict) -> list:
    """Set the fast mode's memory format and compilation; return its mixed-precision callback."""
    device = getattr(dls, 'device', None)
    precision = precision or default_precision(device)
    if precision not in ('bf16', 'fp16', 'fp32'):
        raise ValueError(f"unknown precision {precision!r}; valid: bf16, fp16, fp32")
    model.to(memory_format=torch.channels_last)
    discs.to(memory_format=torch.channels_last)
    if compile:
        if not hasattr(model, 'compile_parts'):
            raise ValueError('compile=True needs a DADA model (its parts are compiled, not the whole)')
        model.compile_parts(**(compile if isinstance(compile, dict) else {}))
    return [DeviceMixedPrecision(amp_mode=precision)] if precision != 'fp32' else []
