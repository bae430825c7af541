"""The package's structure: every module imports only downward (no circle, no import from a lower layer to a higher
one), no module is a drawer of more than 600 lines, and every public name keeps its import path."""
from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / 'dada_fastai'

# The layers, from the bottom: a module may import modules of its own layer or of the layers below it. A new module
# must be placed here (the test says so), which is where its place in the story gets decided.
LAYERS = [
    ('foundations', {'errors', 'methods', 'protocols', 'storage', 'distributed', 'version'}),
    ('files and maths', {'losses', 'mixing', 'meta', 'weights', 'image_files', 'run_folder', 'metrics', 'model', 'datasets',
                         'checkpoint', 'plots', 'outputs'}),
    ('data', {'preprocess', 'toy', 'data_report', 'report', 'data'}),
    ('training parts', {'callbacks', 'prediction'}),
    ('the learner', {'learner', 'history', 'config'}),
    ('runs and inference', {'runs', 'inference', 'runs_table', 'onnx_export'}),
    ('the command line', {'cli', ''}),  # '' is the package itself (`dada_fastai/__init__.py`)
]


def _modules() -> dict[str, Path]:
    """Module name relative to the package ('', 'learner', 'callbacks.adversarial', ...) -> its file."""
    mods = {}
    for path in PACKAGE.rglob('*.py'):
        parts = path.relative_to(PACKAGE).with_suffix('').parts
        mods['.'.join(parts[:-1] if parts[-1] == '__init__' else parts)] = path
    return mods


def _imports(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    """The package's modules that `name` imports anywhere in its source (functions and TYPE_CHECKING blocks too)."""
    here = name.split('.') if path.name == '__init__.py' else name.split('.')[:-1]
    here = [p for p in here if p]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[:len(here) - (node.level - 1)] + (node.module.split('.') if node.module else [])
            elif (node.module or '').startswith('dada_fastai'):
                base = node.module.split('.')[1:]
            else:
                continue
            candidates = ['.'.join(base + [a.name]) for a in node.names] + ['.'.join(base)]
        elif isinstance(node, ast.Import):
            candidates = ['.'.join(a.name.split('.')[1:]) for a in node.names if a.name.startswith('dada_fastai')]
        else:
            continue
        for c in candidates:
            while c not in mods and '.' in c:
                c = c.rsplit('.', 1)[0]
            if c in mods and c != name:
                found.add(c)
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {name: _imports(name, path, mods) for name, path in mods.items()}


def _layer(name: str) -> int:
    top = name.split('.')[0]
    for i, (_, members) in enumerate(LAYERS):
        if top in members:
            return i
    raise AssertionError(f'dada_fastai.{name} has no layer: place it in LAYERS of tests/test_structure.py')


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_import_graph_has_no_circle():
    assert _cycles(_graph()) == []


def test_modules_import_only_their_own_layer_or_lower_ones():
    graph = _graph()
    upward = [f'{a or "dada_fastai"} ({LAYERS[_layer(a)][0]}) imports {b} ({LAYERS[_layer(b)][0]})'
              for a, deps in sorted(graph.items()) for b in sorted(deps) if _layer(b) > _layer(a)]
    assert upward == []


def test_the_checks_see_an_upward_import_and_a_circle(tmp_path):
    """The two tests above fail on what they are meant to catch."""
    mods = {'losses': tmp_path / 'losses.py', 'learner': tmp_path / 'learner.py'}
    mods['losses'].write_text('def f():\n    from .learner import run_iteration\n')
    mods['learner'].write_text('from .losses import upsample\nfrom dada_fastai import losses\n')
    graph = {n: _imports(n, p, mods) for n, p in mods.items()}
    assert graph == {'losses': {'learner'}, 'learner': {'losses'}}
    assert _cycles(graph) == [['learner', 'losses']]
    assert _layer('learner') > _layer('losses')


def test_no_module_is_over_600_lines():
    sizes = {name or '__init__': len(path.read_text().splitlines()) for name, path in _modules().items()}
    assert {n: s for n, s in sizes.items() if s > 600} == {}
    assert sizes['history'] <= 300  # the history logger and its wiring


# the names the developers' guide promises, and the former homes of names that moved or were renamed
KEPT = {
    'dada_fastai.model': ['official_deeplabv2_depth', 'load_official_state_dict', 'Discriminator', 'WeightsError'],
    'dada_fastai.losses': ['berhu_loss', 'weighted_self_information'],
    'dada_fastai.data': ['dada_dataloaders', 'DepthBlock', 'parse_size', 'depth_to_rgb', 'DataItem', 'image_to_rgb'],
    'dada_fastai.learner': ['dada_learner', 'METHODS', 'MethodConfig', 'method_config', 'default_precision',
                            'cpu_has_native_bf16', 'prediction_to_size', 'run_iteration'],
    'dada_fastai.inference': ['load_model', 'evaluate_model', 'predict_files'],
    'dada_fastai.runs': ['train', 'resume', 'RunError', 'resolve_device'],
    'dada_fastai.protocols': ['Protocol', 'ClassProtocol'],
    'dada_fastai.report': ['data_report', 'print_report'],
    'dada_fastai.datasets': ['DatasetError', 'read_array', 'write_png', 'write_synthia_sample'],
    'dada_fastai.config': ['ConfigError', 'TrainConfig'],
    'dada_fastai.checkpoint': ['CheckpointError', 'atomic_write_bytes'],
    'dada_fastai.history': ['read_history'],
    'dada_fastai': ['train', 'resume', 'TrainConfig', 'dada_learner', 'dada_dataloaders', 'load_model', 'METHODS'],
}


@pytest.mark.parametrize('module', sorted(KEPT))
def test_public_names_keep_their_import_paths(module):
    mod = importlib.import_module(module)
    assert [n for n in KEPT[module] if not hasattr(mod, n)] == []


def test_renamed_names_are_the_same_objects():
    from dada_fastai import data, protocols
    assert data.DepthBlock is data.InverseDepthBlock and protocols.Protocol is protocols.ClassProtocol
    import typing
    assert protocols.ClassProtocol is not typing.Protocol


def test_optional_loggers_are_imported_in_their_own_module_only():
    """tensorboard and wandb are imported by `callbacks/tensorboard.py` and `callbacks/wandb.py` alone."""
    pattern = re.compile(r'^\s*(import|from)\s+(wandb|tensorboard|torch\.utils\.tensorboard)\b', re.M)
    users = sorted(name for name, path in _modules().items() if pattern.search(path.read_text()))
    assert users == ['callbacks.tensorboard', 'callbacks.wandb']


def test_onnx_is_imported_in_its_own_module_only():
    """onnx (the `onnx` extra) is imported by `onnx_export.py` alone, and onnxruntime by no module of the package."""
    def users(package: str) -> list[str]:
        pattern = re.compile(rf'^\s*(import|from)\s+{package}\b', re.M)
        return sorted(name for name, path in _modules().items() if pattern.search(path.read_text()))
    assert users('onnx') == ['onnx_export'] and users('onnxruntime') == []
