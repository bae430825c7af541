"""The example scripts run as documented (on a tiny setting)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / 'examples'


def test_train_toy_example(tmp_path):
    env = {**os.environ, 'DADA_FASTAI_CACHE': str(tmp_path / 'cache'), 'MPLBACKEND': 'Agg',
           'PYTHONPATH': os.pathsep.join([str(EXAMPLES.parent), os.environ.get('PYTHONPATH', '')])}
    proc = subprocess.run([sys.executable, str(EXAMPLES / 'train_toy.py'), '--arch', 'test_resnet', '--iters', '2',
                           '--size', '32x64', '--images', '4'], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'mIoU' in proc.stdout and "('flat', 'construction'" in proc.stdout
    assert (tmp_path / 'toy_results.png').stat().st_size > 0
    assert (tmp_path / 'toy_export.safetensors').stat().st_size > 0


def test_paper_example_shows_its_usage():
    proc = subprocess.run([sys.executable, str(EXAMPLES / 'synthia_to_cityscapes.py'), '--help'],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, 'PYTHONPATH': str(EXAMPLES.parent)})
    assert proc.returncode == 0 and 'SYNTHIA-RAND-CITYSCAPES' in proc.stdout
