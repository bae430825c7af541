"""Depth accuracy on targets that ship depth: the metric itself, the toy target's disparity, and the learner,
`evaluate` and run results reporting it."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from dada_fastai.datasets import open_dataset
from dada_fastai.metrics import DepthAccuracy, image_depth_errors, median_scaled_depth
from dada_fastai.toy import SKY_DEPTH, ToyConfig, make_toy_pair, render_scene, scene_rng

TINY = ToyConfig(size=(32, 64), n_source=3, n_target_train=2, n_target_val=2, seed=3)


def test_a_prediction_right_up_to_scale_is_exact():
    gt = torch.rand(16, 24) * 4 + 0.1  # inverse depth
    errs = image_depth_errors(gt * 37.5, gt)  # the scale of the source's depth targets is not the target's
    assert errs['delta1'] == pytest.approx(1.) and errs['abs_rel'] == pytest.approx(0., abs=1e-6)


def test_median_scaled_depth_keeps_the_valid_pixels_and_matches_the_medians():
    gt_inv = torch.tensor([[1., float('nan'), 0.5, 0.25, 0.]])  # depths 1, -, 2, 4, -
    pred, gt = median_scaled_depth(torch.tensor([[2., 9., 1., -1., 9.]]), gt_inv)
    torch.testing.assert_close(gt, torch.tensor([1., 2., 4.]))
    assert pred.median() == gt.median()
    torch.testing.assert_close(pred[:2] / pred[0], torch.tensor([1., 2.]))  # ratios kept: 1 / 2 and 1 / 1
    assert pred[2] == 4.  # a negative inverse depth is as far as it gets: the farthest true depth, not 1e8 m
    assert median_scaled_depth(torch.ones(1, 2), torch.zeros(1, 2)) is None


def test_only_the_far_side_is_capped():
    gt_depth = torch.tensor([[1., 2., 4.]])
    pred, _ = median_scaled_depth(1 / torch.tensor([[0.25, 2., 40.]]), 1 / gt_depth)  # medians 2 and 2: scale 1
    torch.testing.assert_close(pred, torch.tensor([0.25, 2., 4.]))  # too near stays too near (wrong); 40 m -> 4 m


def test_known_errors_and_the_constant_baseline():
    gt_depth = torch.tensor([[1., 2., 4., 8.]])
    pred_depth = torch.tensor([[1., 2., 8., 4.]])  # medians (the lower middle value) 2 and 2: scale 1
    errs = image_depth_errors(1 / pred_depth, 1 / gt_depth)
    assert errs['delta1'] == pytest.approx(0.5)
    assert errs['abs_rel'] == pytest.approx((0 + 0 + 1 + 0.5) / 4)
    # a constant at the ground truth's median (2): ratios 2, 1, 2, 4 -> one under 1.25
    assert errs['baseline_delta1'] == pytest.approx(0.25)
    assert errs['baseline_abs_rel'] == pytest.approx((1 + 0 + 0.5 + 0.75) / 4)


def test_invalid_ground_truth_is_left_out_and_bad_predictions_count():
    gt = torch.tensor([[1., float('nan'), 0., 0.5, 0.5, 0.5, 0.25]])  # depths 1, -, -, 2, 2, 2, 4
    pred = torch.tensor([[-3., 5., 5., 0.5, 0.5, 0.5, 0.25]])  # a negative inverse depth on the nearest pixel
    errs = image_depth_errors(pred, gt)  # medians 2 and 2: scale 1; the negative one counts as 4 m, not 1e8 m
    assert errs['delta1'] == pytest.approx(0.8)
    assert errs['abs_rel'] == pytest.approx(3 / 5)  # |4 - 1| / 1 over five pixels: bounded by the image's range
    assert image_depth_errors(pred, torch.full((1, 7), float('nan'))) is None


def test_depth_accuracy_averages_images():
    acc = DepthAccuracy()
    gt = torch.rand(2, 8, 8) + 0.5
    pred = torch.stack([gt[0], torch.ones(8, 8)])[:, None]  # one perfect image, one constant
    acc.accumulate(pred, gt)
    res = acc.result()
    assert res['images'] == 2
    per_image = [image_depth_errors(pred[i, 0], gt[i]) for i in range(2)]
    for k in ('delta1', 'abs_rel', 'baseline_delta1', 'baseline_abs_rel'):
        assert res[k] == pytest.approx((per_image[0][k] + per_image[1][k]) / 2, abs=1e-4), k
    assert per_image[0]['delta1'] == pytest.approx(1.) and per_image[1]['delta1'] == pytest.approx(per_image[1]['baseline_delta1'])
    assert 'median' in res['note']
    acc.reset()
    assert acc.result() is None


def test_toy_target_ships_its_depth_as_cityscapes_disparity(tmp_path):
    _, cityscapes = make_toy_pair(tmp_path, TINY)
    ds = open_dataset(f'cityscapes:{cityscapes}', n_classes=7)
    assert ds.has_depth
    s = ds.samples('val')[0]
    disparity = ds.read_depth(s)  # (p - 1) / 256: the inverse depth up to baseline x focal length
    _, labels, depth = render_scene(scene_rng(TINY.seed, 'target', 0, 'val'), TINY, 'target')
    sky = depth >= SKY_DEPTH
    assert np.isnan(disparity[sky]).all() and np.isfinite(disparity[~sky]).all()
    errs = image_depth_errors(torch.from_numpy(1 / depth), torch.from_numpy(disparity))
    assert errs['delta1'] == pytest.approx(1.)  # the true depth scores perfectly
    assert errs['abs_rel'] < 0.01  # up to the 1/256-pixel rounding of the disparity


def test_learner_evaluate_reports_depth_when_the_target_has_it(tmp_path):
    from dada_fastai.data import dada_dataloaders
    from dada_fastai.learner import dada_learner
    synthia, cityscapes = make_toy_pair(tmp_path, TINY)
    dls = dada_dataloaders(f'synthia:{synthia}', f'cityscapes:{cityscapes}', n_classes=7, source_size=(32, 64),
                           target_size=(32, 64), bs=2)
    learn = dada_learner(dls, 'dada', arch='test_resnet', ndf=8)
    with learn.no_bar(), learn.no_logging():
        learn.fit_iters(1, schedule='constant')
        res = learn.evaluate()
    assert res['depth']['images'] == 2 and 0 <= res['depth']['delta1'] <= 1
    assert res['miou'] is not None  # the depth does not get in the way of the segmentation metrics
    delta1 = [m for m in learn.metrics if m.name == 'delta1']  # a column of the progress table and history
    assert len(delta1) == 1 and delta1[0].value == res['depth']['delta1']
    learn_so = dada_learner(dls, 'source_only', arch='test_resnet', ndf=8)
    with learn_so.no_bar(), learn_so.no_logging():
        assert 'depth' not in learn_so.evaluate()  # no depth block, no depth figures
    assert 'delta1' not in [m.name for m in learn_so.metrics]
    shutil.rmtree(cityscapes / 'disparity')  # a Cityscapes target without depth: no depth column
    dls_nodepth = dada_dataloaders(f'synthia:{synthia}', f'cityscapes:{cityscapes}', n_classes=7,
                                   source_size=(32, 64), target_size=(32, 64), bs=2)
    assert 'delta1' not in [m.name for m in dada_learner(dls_nodepth, 'dada', arch='test_resnet', ndf=8).metrics]


def test_evaluate_command_reports_depth_and_runs_in_bf16(tmp_path, monkeypatch):
    from dada_fastai.config import resolve_config
    from dada_fastai.inference import evaluate_model, load_model
    from dada_fastai.runs import train
    from e2e import tiny_options
    synthia, cityscapes = make_toy_pair(tmp_path, TINY)
    opts = tiny_options(f'synthia:{synthia}', f'cityscapes:{cityscapes}', iters=2, source_size='32x64',
                        target_size='32x64')
    res = train(resolve_config(None, out=str(tmp_path / 'run'), **opts))
    assert res['depth']['images'] == 2  # results.json has it too
    from dada_fastai.history import read_history
    header, rows, _, _ = read_history(tmp_path / 'run' / 'history.csv')
    last_valid = [r for r in rows if r.get('delta1')][-1]  # the validation's depth, by iteration
    assert 'delta1' in header and float(last_valid['delta1']) == pytest.approx(res['depth']['delta1'], abs=1e-4)
    fp32 = evaluate_model(tmp_path / 'run', device='cpu')
    assert fp32['depth']['delta1'] == pytest.approx(res['depth']['delta1'], abs=0.02)
    assert fp32['miou'] == pytest.approx(res['miou'], abs=1)
    bf16 = evaluate_model(tmp_path / 'run', device='cpu', precision='bf16')
    assert bf16['depth']['images'] == 2 and bf16['miou'] == pytest.approx(fp32['miou'], abs=15)
    seen = []
    lm = load_model(tmp_path / 'run', device='cpu', precision='bf16')
    hook = lm.model.register_forward_hook(lambda m, i, o: seen.append(o[0].dtype))
    lm.forward(torch.zeros(1, 3, 32, 64))
    hook.remove()
    assert seen == [torch.bfloat16]
