"""Self-training (dacs, dada_st): the mean teacher, ClassMix and the depth-aware mix, the confidence weight, and the
methods end to end (resume, init, evaluation of either network, what show_results draws, bad input)."""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from dada_fastai.checkpoint import load_checkpoint
from dada_fastai.cli import main
from dada_fastai.config import ConfigError, resolve_config
from dada_fastai.mixing import (class_mix_masks, confidence_weight, depth_aware_masks, ema_alpha, ema_update, mix,
                                pseudo_labels, strong_augment, weighted_cross_entropy)
from dada_fastai.runs import build_run_learner, resume, train
from e2e import Crash, cli_args, tiny_options, tiny_pair


@pytest.fixture(scope='module')
def pair(tmp_path_factory):
    return tiny_pair(tmp_path_factory.mktemp('data'))


# ---------------------------------------------------------------------------------------------------------
# The maths
# ---------------------------------------------------------------------------------------------------------
def test_the_ema_update_against_a_hand_computation():
    student, teacher = nn.BatchNorm2d(2), nn.BatchNorm2d(2)
    with torch.no_grad():
        student.weight.copy_(torch.tensor([1., 3.]))
        teacher.weight.copy_(torch.tensor([5., -1.]))
        student.running_mean.copy_(torch.tensor([2., 2.]))
        student.num_batches_tracked.fill_(7)
    assert [ema_alpha(t, 0.99) for t in (0, 1, 3, 1000)] == [0., 0.5, 0.75, 0.99]
    ema_update(teacher, student, 0.75)
    assert torch.equal(teacher.weight, torch.tensor([0.75 * 5 + 0.25 * 1, 0.75 * -1 + 0.25 * 3]))
    assert torch.equal(teacher.running_mean, torch.tensor([0.5, 0.5]))  # BatchNorm statistics averaged too
    assert int(teacher.num_batches_tracked) == 7  # counters copied
    ema_update(teacher, student, ema_alpha(0, 0.99))  # the first step copies the student
    assert torch.equal(teacher.weight, student.weight)


def test_class_mix_takes_half_of_each_images_classes():
    torch.manual_seed(0)
    labels = torch.full((3, 8, 8), 255)
    labels[0, :, :2], labels[0, :, 2:4], labels[0, :, 4:6], labels[0, :, 6:] = 0, 1, 2, 3  # 4 classes
    labels[1, :4], labels[1, 4:] = 5, 6  # 2 classes
    labels[2, :, :3], labels[2, :, 3:5], labels[2, :, 5:7] = 1, 4, 6  # 3 classes and ignored pixels
    for _ in range(20):
        masks = class_mix_masks(labels)
        for lab, m, n in zip(labels, masks, (2, 1, 2)):
            taken = lab[m].unique()
            assert len(taken) == n and (lab[m] != 255).all()
            assert all(((lab == c) <= m).all() for c in taken)  # a class is taken whole
    draws = {tuple(class_mix_masks(labels)[0, 0, ::2].tolist()) for _ in range(30)}
    assert len(draws) > 3  # the classes are drawn at random, per image


def test_the_confidence_weight_and_the_pseudo_labels():
    logits = torch.zeros(2, 3, 2, 2)
    logits[0, 1] = 10.  # every pixel of image 0 confident in class 1
    logits[1, 2, 0] = 10.  # image 1: its top row confident in class 2, its bottom row uniform
    labels, conf = pseudo_labels(logits)
    assert labels[0].eq(1).all() and labels[1, 0].eq(2).all()
    assert torch.allclose(conf[1, 1], torch.full((2,), 1 / 3))
    assert confidence_weight(conf, 0.968)[:, 0, 0].tolist() == [1.0, 0.5]  # one weight per image (DACS)
    assert confidence_weight(conf, 0.968).shape == conf.shape and confidence_weight(conf, 0.968)[1].eq(0.5).all()
    assert confidence_weight(conf, 0.2)[:, 0, 0].tolist() == [1.0, 1.0]
    assert confidence_weight(conf, 0.968, 'pixel')[1].tolist() == [[1., 1.], [0., 0.]]  # each pixel its own


def test_the_depth_aware_mask_on_a_hand_made_scene():
    """A source person 5 m away pasted over a target scene: a wall 2 m away on the left (it hides the person), a
    street 20 m away on the right (the person stands in front of it); unknown depths keep ClassMix's choice."""
    person = torch.zeros(1, 4, 6, dtype=torch.bool)
    person[:, 1:3] = True  # rows 1-2 pasted
    source = torch.full((1, 1, 4, 6), 1 / 5.)  # inverse depth: larger is nearer
    target = torch.full((1, 1, 4, 6), 1 / 20.)
    target[..., :3] = 1 / 2.
    source[..., 0, 1, 5] = float('nan')  # no source depth there
    kept = depth_aware_masks(person, source, target)
    expected = person.clone()
    expected[0, 1:3, :3] = False  # behind the wall
    expected[0, 1, 5] = True  # unknown: kept
    assert torch.equal(kept, expected)
    image = mix(torch.ones(1, 3, 4, 6), torch.zeros(1, 3, 4, 6), kept)
    assert torch.equal(image[0, 0].bool(), kept[0])


def test_the_strong_augmentation_is_seeded_and_stays_in_range():
    x = torch.rand(2, 3, 16, 24)
    torch.manual_seed(3)
    a = strong_augment(x, p_jitter=1., p_blur=1.)
    torch.manual_seed(3)
    b = strong_augment(x, p_jitter=1., p_blur=1.)
    assert torch.equal(a, b) and a.shape == x.shape and 0 <= float(a.min()) and float(a.max()) <= 1
    assert not torch.equal(a, x) and torch.equal(strong_augment(x, p_jitter=0., p_blur=0.), x)


def test_the_weighted_cross_entropy():
    logits = torch.randn(1, 3, 2, 2)
    labels = torch.tensor([[[0, 1], [255, 2]]])
    weights = torch.tensor([[[1., 0.5], [1., 0.]]])
    ce = torch.nn.functional.cross_entropy(logits, torch.tensor([[[0, 1], [0, 2]]]), reduction='none')
    expected = (ce[0, 0, 0] + 0.5 * ce[0, 0, 1]) / 4  # over all pixels; ignored and zero-weight ones count 0
    assert math.isclose(float(weighted_cross_entropy(logits, labels, weights)), float(expected), rel_tol=1e-6)


def test_the_pseudo_label_reports_share_one_teacher_pass_per_batch():
    from types import SimpleNamespace
    from dada_fastai.callbacks import pseudo_label_reports
    logits = torch.zeros(1, 2, 2, 2)
    logits[0, 1, 0] = 10.  # top row: class 1, confident; bottom row: a tie (confidence 0.5), argmax class 0
    calls = []

    class Teacher:
        model = nn.Identity()

        def predict(self, x):
            calls.append(x)
            return logits, None
    learn = SimpleNamespace(teacher=Teacher())
    reports = pseudo_label_reports(0.9)
    for r in reports:
        r.reset()
    for label in (torch.tensor([[[1, 0], [0, 255]]]), torch.tensor([[[1, 1], [1, 1]]])):
        learn.xb, learn.yb = (torch.zeros(1, 3, 2, 2),), (label,)
        for r in reports:
            r.accumulate(learn)
    assert len(calls) == 2  # one pass per batch for both reports
    acc, conf = reports
    assert (acc.name, conf.name) == ('pl_acc', 'pl_conf')
    assert acc.value == pytest.approx(100. * (2 + 2) / (3 + 4))  # right on 2 of 3 labelled pixels, then on 2 of 4
    assert conf.value == pytest.approx(50.)  # the top rows above 0.9, of 8 pixels
    for r in reports:
        r.reset()
    assert acc.value is None and conf.value is None


# ---------------------------------------------------------------------------------------------------------
# The methods in training
# ---------------------------------------------------------------------------------------------------------
def test_no_gradient_reaches_the_teacher_and_it_follows_the_student(pair):
    cfg = resolve_config(None, **tiny_options(*pair, method='dada_st', iters=2, st_alpha=0.5))
    learn = build_run_learner(cfg)
    with learn.no_bar(), learn.no_logging(), warnings.catch_warnings():
        warnings.simplefilter('error')  # the teacher's own network does not shadow `learn.model` (fastai warns)
        learn.fit_iters(2, schedule='constant')
    teacher = learn.teacher.model
    assert learn.teacher.step == 2
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    student = dict(learn.model.named_parameters())
    moved = [n for n, p in teacher.named_parameters() if not torch.equal(p, student[n])]
    assert moved  # an average of the student's steps (alpha 0.5 at the second), not the student itself
    assert 'st' in learn.dada.batch_terms and 'st_depth' in learn.dada.batch_terms


def test_the_pseudo_labels_never_read_the_targets_labels(pair, tmp_path):
    """The target's training labels poisoned (every id changed) change nothing in a self-training run."""
    source, target = tiny_pair(tmp_path / 'data')  # a copy of its own, to poison
    opts = tiny_options(source, target, method='dada_st', iters=2, checkpoint_every=0)
    clean = train(resolve_config(None, out=str(tmp_path / 'clean'), **opts))
    import cv2
    labels = sorted(Path(target.split(':', 1)[1]).glob('gtFine/train/*/*_labelIds.png'))
    assert labels
    for f in labels:
        ids = cv2.imread(str(f), cv2.IMREAD_UNCHANGED)
        cv2.imwrite(str(f), ((ids.astype(np.int32) + 11) % 34).astype(np.uint8))
    poisoned = train(resolve_config(None, out=str(tmp_path / 'poisoned'), **opts))
    a, b = (load_checkpoint(tmp_path / r / 'last.pth') for r in ('clean', 'poisoned'))
    for k in a['model']:
        assert torch.equal(a['model'][k], b['model'][k]), k
    for k in a['teacher']['model']:
        assert torch.equal(a['teacher']['model'][k], b['teacher']['model'][k]), k
    assert clean['miou'] == poisoned['miou']


@pytest.mark.parametrize('method, mode', [('dada_st', 'faithful'), ('dacs', 'fast')])
def test_a_resumed_self_training_run_is_bit_identical(pair, tmp_path, method, mode):
    opts = tiny_options(*pair, method=method, mode=mode, iters=6, checkpoint_every=3, eval_every=2, st_alpha=0.9)
    train(resolve_config(None, out=str(tmp_path / 'full'), **opts))
    with pytest.raises(KeyboardInterrupt):
        train(resolve_config(None, out=str(tmp_path / 'cut'), **opts), cbs=[Crash(4)])
    assert load_checkpoint(tmp_path / 'cut')['teacher']['step'] == 3
    resume(tmp_path / 'cut')
    a, b = (load_checkpoint(tmp_path / r) for r in ('full', 'cut'))
    assert a['teacher']['step'] == b['teacher']['step'] == 6
    for part in ('model', 'teacher'):
        sa, sb = (a['model'], b['model']) if part == 'model' else (a['teacher']['model'], b['teacher']['model'])
        for k in sa:
            assert torch.equal(sa[k], sb[k]), f'{part}.{k} differs after resume'


@pytest.mark.parametrize('extra', [dict(mode='fast', bn='frozen', schedule='one_cycle'),
                                   dict(schedule='flat_cos', st_mix='class', st_start=1),
                                   dict(mode='fast', precision='bf16', schedule='poly', arch='resnet10t')])
def test_self_training_runs_with_every_mode_schedule_and_backbone(pair, tmp_path, extra):
    res = train(resolve_config(None, **tiny_options(*pair, method='dada_st', iters=2, out=str(tmp_path / 'run'),
                                                     **extra)))
    assert res['iters'] == 2 and res['miou'] is not None
    header = (tmp_path / 'run' / 'history.csv').read_text().splitlines()[0].split(',')
    assert {'st', 'st_depth', 'pl_acc', 'pl_conf'} <= set(header)


def test_lr_find_leaves_the_teacher_as_it_found_it(pair):
    learn = build_run_learner(resolve_config(None, **tiny_options(*pair, method='dacs', iters=2)))
    with learn.no_bar(), learn.no_logging():
        learn.fit_iters(1, schedule='constant')
        before = {k: v.clone() for k, v in learn.teacher.model.state_dict().items()}
        learn.lr_find(num_it=6, show_plot=False)
    after = learn.teacher.model.state_dict()
    assert learn.teacher.step == 1 and all(torch.equal(before[k], after[k]) for k in before)


def test_init_starts_student_and_teacher_from_a_finished_run(pair, tmp_path, capsys):
    dada = tmp_path / 'dada'
    assert main(['train', *cli_args(tiny_options(*pair, iters=2, out=str(dada)))]) == 0
    cfg = resolve_config(None, **tiny_options(*pair, method='dada_st', iters=2, init=str(dada), lambda_adv=0.))
    learn = build_run_learner(cfg)
    exported = load_checkpoint(dada / 'last.pth')['model']
    assert all(torch.equal(v, exported[k]) for k, v in learn.model.state_dict().items())
    with learn.no_bar(), learn.no_logging():
        learn.fit_iters(1, schedule='constant')
    assert learn.teacher.step == 1  # the teacher was made from those weights when training started
    plain = tmp_path / 'plain'
    assert main(['train', *cli_args(tiny_options(*pair, iters=2, method='source_only', out=str(plain)))]) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(['train', *cli_args(tiny_options(*pair, method='dada_st', init=str(plain), out=str(tmp_path / 'x')))])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 1 and '\n' not in err and '--init' in err and 'no depth block' in err and 'dacs' in err
    assert not (tmp_path / 'x').exists()
    assert main(['train', *cli_args(tiny_options(*pair, method='dacs', iters=1, init=str(plain),
                                                 out=str(tmp_path / 'dacs')))]) == 0


def test_evaluate_names_the_network_and_show_results_shows_what_was_taught(pair, tmp_path, capsys):
    run = tmp_path / 'run'
    assert main(['train', *cli_args(tiny_options(*pair, method='dada_st', iters=2, out=str(run)))]) == 0
    capsys.readouterr()
    assert main(['evaluate', str(run), '--json']) == 0
    student = json.loads(capsys.readouterr().out)
    assert student['miou'] == pytest.approx(json.loads((run / 'results.json').read_text())['miou'])
    assert main(['evaluate', str(run), '--network', 'teacher', '--json']) == 0
    assert json.loads(capsys.readouterr().out)['miou'] is not None
    from dada_fastai.inference import load_model
    state = load_checkpoint(run / 'last.pth')
    loaded = load_model(run, device='cpu', network='teacher').model.state_dict()
    assert all(torch.equal(v, state['teacher']['model'][k]) for k, v in loaded.items())
    assert not all(torch.equal(v, state['model'][k]) for k, v in loaded.items())  # the teacher, not the student
    with pytest.raises(SystemExit):
        main(['evaluate', str(run / 'export.safetensors'), '--network', 'teacher'])
    assert 'holds the student alone' in capsys.readouterr().err
    learn = build_run_learner(resolve_config(None, **tiny_options(*pair, method='dada_st', iters=1)))
    with learn.no_bar(), learn.no_logging():
        learn.fit_iters(1, schedule='constant')
    import matplotlib
    matplotlib.use('Agg')
    axs = learn.show_results(max_n=2)
    titles = [a.get_title() for a in axs]
    assert len(axs) == 5 * 3  # 2 images x (image, truth, prediction, teacher, depth), and what was taught
    assert 'mixed image' in titles and any(t.startswith("teacher's pseudo-label") for t in titles)


def test_the_toy_gives_self_training_its_own_budget_and_weights():
    """With no data, a self-training method trains 600 iterations with the toy's lighter mixed-image loss; DADA keeps
    its 300; an explicit option still wins."""
    st, dada = resolve_config(method='dada_st'), resolve_config()
    assert (st.iters, st.lambda_st, st.st_source_weight, st.lambda_st_depth) == (600, 0.25, 0.5, 0.1)
    assert (dada.method, dada.iters, resolve_config(method='dacs').iters) == ('dada', 300, 600)
    assert resolve_config(method='dacs', iters=50, lambda_st=1.).lambda_st == 1.


def test_self_training_options_and_mixes_are_checked(pair):
    with pytest.raises(ConfigError, match='--lambda-st applies to self-training'):
        resolve_config(None, **tiny_options(*pair, method='dada', lambda_st=0.5))
    with pytest.raises(ConfigError, match='--st-mix depth needs'):
        resolve_config(None, **tiny_options(*pair, method='dacs', st_mix='depth'))
    with pytest.raises(ConfigError, match='st-threshold'):
        resolve_config(None, **tiny_options(*pair, method='dacs', st_threshold=1.5))


@pytest.mark.parametrize('name, method, alpha, mix', [('synthia2cityscapes_dacs', 'dacs', 0.99, 'class'),
                                                       ('synthia2cityscapes_dada_st', 'dada_st', 0.999, 'depth')])
def test_the_published_recipes_are_presets(pair, name, method, alpha, mix):
    cfg = resolve_config(name, source=pair[0], target=pair[1])
    assert (cfg.method, cfg.st_alpha, cfg.st_threshold, cfg.st_mix, cfg.lambda_st, cfg.st_source_weight) == \
        (method, alpha, 0.968, mix, 1., 1.)
    assert (cfg.iters, cfg.bs, cfg.lr, cfg.head_lr_mult, cfg.wd, cfg.opt, cfg.schedule) == \
        (250_000, 2, 2.5e-4, 10, 5e-4, 'sgd', 'poly')
