"""Segmentation metrics: the confusion matrix at the label's resolution, IoU, mIoU and mIoU*, one implementation for
the Learner's validation and for `evaluate` (depth accuracy: test_depth_metrics.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dada_fastai.metrics import ConfusionMatrix, confusion_matrix, iou_from_confusion, segmentation_scores
from dada_fastai.protocols import get_protocol


def test_confusion_matrix_leaves_out_ignored_pixels():
    label = torch.tensor([[0, 0, 1, 1, 255]])
    pred = torch.tensor([[0, 1, 1, 1, 0]])
    cm = confusion_matrix(pred, label, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [0, 0, 0]]
    iou = iou_from_confusion(cm)
    assert iou[0] == pytest.approx(50.) and iou[1] == pytest.approx(200 / 3) and np.isnan(iou[2])


def test_scores_of_the_sixteen_class_protocol():
    proto = get_protocol(16)
    cm = np.zeros((16, 16), np.int64)
    cm[0, 0], cm[0, 1], cm[2, 2], cm[3, 3] = 3, 1, 4, 2  # road 3 of 4 right, 1 taken for sidewalk
    res = segmentation_scores(cm, proto)
    iou = {0: 75., 1: 0., 2: 100., 3: 100.}
    assert res['per_class'][proto.classes[0]] == pytest.approx(75.)
    assert res['per_class'][proto.classes[5]] is None  # absent from labels and predictions
    assert res['miou'] == pytest.approx(np.mean(list(iou.values())))
    kept = [v for k, v in iou.items() if k in proto.subset13]
    assert res['miou13'] == pytest.approx(np.mean(kept))
    assert segmentation_scores(np.eye(7, dtype=np.int64), get_protocol(7))['miou13'] is None


def test_confusion_matrix_upsamples_logits_to_the_label():
    proto = get_protocol(7)
    acc = ConfusionMatrix(proto)
    seg = torch.zeros(1, 7, 2, 2)
    seg[0, 3] = 1.  # class 3 everywhere, at a quarter of the label's size
    acc.accumulate(seg, torch.full((1, 8, 8), 3))
    assert acc.cm.sum() == 64 and acc.cm[3, 3] == 64
    assert acc.scores()['miou'] == pytest.approx(100.) and acc.per_class()[proto.classes[3]] == pytest.approx(100.)


def test_learner_and_evaluate_share_the_metrics():
    """`dada-fastai evaluate` runs the Learner's own evaluation (one engine, `DADALearner.for_evaluation`), so it
    counts with the metrics the Learner validates with; it keeps no confusion matrix of its own."""
    import inspect
    from dada_fastai import inference, learner, metrics
    source = inspect.getsource(inference)
    assert inference.DADALearner is learner.DADALearner and 'for_evaluation(' in source
    assert not any(name in source for name in ('ConfusionMatrix', 'confusion_matrix(', 'iou_from_confusion'))
    for name in ('ConfusionMatrix', 'MeanIoU', 'confusion_matrix', 'iou_from_confusion', 'finite_mean'):
        assert getattr(learner, name) is getattr(metrics, name)  # the old import path still works
