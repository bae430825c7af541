"""`dada-fastai export RUN --format onnx`: onnxruntime runs the file as PyTorch runs the network (within 1e-4, on two
image sizes), its metadata records the preprocessing; a network without the depth block exports its logits alone;
`--format safetensors` writes the package's own export again; a missing extra is one line."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from dada_fastai.cli import main
from dada_fastai.inference import export_model, load_model
from dada_fastai.meta import RunMeta
from dada_fastai.onnx_export import preprocessing
from dada_fastai.run_folder import RunFolder
from e2e import fails_in_one_line, make_run

onnx = pytest.importorskip('onnx', reason='the onnx extra: pip install ".[onnx]"')
ort = pytest.importorskip('onnxruntime', reason='the onnx extra: pip install ".[onnx]"')


def _session(path):
    return ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])


def test_onnx_runs_as_pytorch_at_two_sizes_and_records_the_preprocessing(tmp_path, capsys):
    run = make_run(tmp_path / 'run', 'synthia:/data/synthia', 'cityscapes:/data/cityscapes', classes=7,
                   depth_scale=0.1)
    capsys.readouterr()
    assert main(['export', str(run)]) == 0  # --format onnx is the default
    path = RunFolder(run).onnx
    assert path.is_file() and str(path) in capsys.readouterr().out.replace('\n', '')
    session = _session(path)
    assert [i.name for i in session.get_inputs()] == ['image']
    assert [o.name for o in session.get_outputs()] == ['logits', 'inverse_depth']
    model = load_model(run, device='cpu').model
    rng = np.random.default_rng(0)
    for h, w in ((32, 64), (56, 40)):  # the run's size and another, of another aspect ratio
        x = rng.standard_normal((2, 3, h, w)).astype(np.float32)
        logits, depth = session.run(None, {'image': x})
        with torch.no_grad():
            seg, inv = model(torch.from_numpy(x))
        assert logits.shape == tuple(seg.shape) == (2, 7, -(-h // 8), -(-w // 8)) and depth.shape == tuple(inv.shape)
        assert np.abs(logits - seg.numpy()).max() < 1e-4 and np.abs(depth - inv.numpy()).max() < 1e-4
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(meta['mean']) == pytest.approx([0.485, 0.456, 0.406])
    assert json.loads(meta['std']) == pytest.approx([0.229, 0.224, 0.225])
    assert (meta['channel_order'], meta['scale'], meta['input_size']) == ('RGB', '1/255', '32x64')
    assert meta['protocol'] == '7'
    assert meta['fit'].startswith('stretch') and meta['arch'] == 'test_resnet' and meta['method'] == 'dada'
    assert json.loads(meta['classes']) == ['flat', 'construction', 'object', 'nature', 'sky', 'human', 'vehicle']
    assert len(json.loads(meta['palette'])) == 7 and meta['depth_scale'] == '0.1'
    import dada_fastai
    assert meta['dada_fastai_version'] == dada_fastai.__version__
    assert set(json.loads(meta['outputs'])) == {'logits', 'inverse_depth'}


def test_a_network_without_depth_exports_its_logits_alone_and_from_a_checkpoint_path(tmp_path):
    run = make_run(tmp_path / 'run', 'synthia:/data/synthia', 'cityscapes:/data/cityscapes', method='source_only')
    out = export_model(RunFolder(run).export, 'onnx', tmp_path / 'plain.onnx')
    session = _session(out)
    assert [o.name for o in session.get_outputs()] == ['logits']
    x = np.random.default_rng(1).standard_normal((1, 3, 24, 48)).astype(np.float32)
    (logits,) = session.run(None, {'image': x})
    with torch.no_grad():
        seg, depth = load_model(run, device='cpu').model(torch.from_numpy(x))
    assert depth is None and np.abs(logits - seg.numpy()).max() < 1e-4
    assert export_model(RunFolder(run).export, 'onnx') == RunFolder(run).onnx  # a run's file: the run's export.onnx


def test_safetensors_export_is_written_again_and_predicts_the_same(tmp_path):
    run = make_run(tmp_path / 'run', 'synthia:/data/synthia', 'cityscapes:/data/cityscapes', classes=7)
    out = tmp_path / 'models' / 'copy.safetensors'
    assert main(['export', str(run), '--format', 'safetensors', '--out', str(out)]) == 0
    image = np.random.default_rng(2).integers(0, 256, (32, 64, 3), dtype=np.uint8)
    again, first = load_model(out, device='cpu').predict(image), load_model(run, device='cpu').predict(image)
    assert torch.equal(again[1][0], first[1][0]) and torch.equal(again[2][0], first[2][0])


def test_reference_normalisation_is_recorded_as_bgr():
    meta = preprocessing(RunMeta(16, 'deeplabv2_resnet101', norm='reference', target_size=(512, 1024)))
    assert meta['channel_order'] == 'BGR' and meta['input_size'] == '512x1024'
    assert json.loads(meta['std']) == pytest.approx([1 / 255] * 3)
    assert json.loads(meta['mean']) == pytest.approx([104.00698793 / 255, 116.66876762 / 255, 122.67891434 / 255])


def test_a_missing_extra_and_bad_options_are_one_line(tmp_path, capsys, monkeypatch):
    run = make_run(tmp_path / 'run', 'synthia:/data/synthia', 'cityscapes:/data/cityscapes', classes=7)
    cases = [(['export', str(run), '--format', 'tflite'], "invalid choice: 'tflite'", 2),
             (['export', str(run), '--out', str(tmp_path)], '--out must be a file path', 1),
             (['export', str(tmp_path / 'none')], 'not found', 1)]
    monkeypatch.setitem(sys.modules, 'onnx', None)  # as if the extra were not installed
    cases.append((['export', str(run)], 'pip install "dada-fastai[onnx]"', 1))
    for args, says, code in cases:
        fails_in_one_line(capsys, args, says, code)
    assert not RunFolder(run).onnx.exists()
