"""The tutorial notebooks run end to end (on a tiny setting) in a fresh kernel of the current interpreter."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import ipykernel  # noqa: F401  (the dev extra: the notebooks run in a kernel of this interpreter)
import nbclient
import nbformat

REPO = Path(__file__).resolve().parents[1]
NBS = REPO / 'nbs'

# The toy walkthrough at the smallest size the discriminator accepts (>= 32 px a side), a handful of images,
# timm's tiny test ResNet and a few iterations (two epochs of two batches, so the schedules and the per-epoch
# validation both run).
TINY_TOY = """TOY_SIZE = (32, 64)
N_SOURCE, N_TARGET_TRAIN, N_TARGET_VAL = 4, 4, 2
SIZE = (32, 64)
ARCH = 'test_resnet'
BS, LR, ITERS = 2, 2e-3, 3
SEED = 0
COMPARE = True"""


def _python3_kernel(root: Path, monkeypatch) -> str:
    """A 'python3' kernelspec running this interpreter, found first through JUPYTER_PATH (a stale user-level
    python3 kernel of another environment is shadowed)."""
    spec = root / 'kernels' / 'python3'
    spec.mkdir(parents=True)
    (spec / 'kernel.json').write_text(json.dumps({
        'argv': [sys.executable, '-m', 'ipykernel_launcher', '-f', '{connection_file}'],
        'display_name': 'Python 3 (dada-fastai tests)', 'language': 'python'}))
    monkeypatch.setenv('JUPYTER_PATH', os.pathsep.join([str(root), os.environ.get('JUPYTER_PATH', '')]).rstrip(os.pathsep))
    from jupyter_client.kernelspec import KernelSpecManager
    assert KernelSpecManager().get_kernel_spec('python3').argv[0] == sys.executable
    return 'python3'


def run_notebook(path: Path, parameters: str, tmp_path: Path, monkeypatch, timeout: int = 300):
    """Execute `path` with its `parameters` cell replaced, in `tmp_path`, and return the executed notebook."""
    nb = nbformat.read(path, as_version=4)
    cells = [c for c in nb.cells if 'parameters' in c.get('metadata', {}).get('tags', [])]
    assert len(cells) == 1, f'{path.name} must have exactly one cell tagged "parameters"'
    cells[0].source = parameters
    work = tmp_path / 'work'
    work.mkdir()
    kernel = _python3_kernel(tmp_path / 'jupyter', monkeypatch)
    # the kernel inherits this environment: no windows, a private cache, the checkout importable
    monkeypatch.setenv('MPLBACKEND', 'Agg')
    monkeypatch.setenv('DADA_FASTAI_CACHE', str(tmp_path / 'cache'))
    monkeypatch.setenv('PYTHONPATH', os.pathsep.join([str(REPO), os.environ.get('PYTHONPATH', '')]).rstrip(os.pathsep))
    client = nbclient.NotebookClient(nb, timeout=timeout, kernel_name=kernel, resources={'metadata': {'path': str(work)}})
    client.execute()
    return nb


def _text(nb) -> str:
    """All text the notebook's code cells produced (streams and plain-text results)."""
    out = []
    for cell in nb.cells:
        for o in cell.get('outputs', []):
            if o.get('output_type') == 'stream':
                out.append(o.get('text', ''))
            elif 'data' in o:
                out.append(o['data'].get('text/plain', ''))
    return '\n'.join(out)


def test_notebooks_are_stored_without_outputs():
    for path in sorted(NBS.glob('*.ipynb')):
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == 'code' and (c.outputs or c.execution_count)]
        assert not dirty, f'{path.name}: cells {dirty} hold outputs; clear them before committing'


def test_toy_walkthrough(tmp_path, monkeypatch):
    nb = run_notebook(NBS / '01_toy_walkthrough.ipynb', TINY_TOY, tmp_path, monkeypatch)
    errors = [o for c in nb.cells for o in c.get('outputs', []) if o.get('output_type') == 'error']
    assert not errors
    text = _text(nb)
    assert "'miou':" in text and 'per_class' in text  # the evaluate() results
    assert 'target mIoU: source-only' in text  # the comparison ran
    assert 'source image' in text and 'target image' in text  # the batch's tensors
    assert 'Final sample' in text or 'Building one batch' in text  # the DataBlock summary
    assert (tmp_path / 'cache' / 'toy').is_dir()  # the pair went to the private cache
