"""The manual cannot rot: the README stays a first page, the documentation site builds strictly (a broken link or a
missing API name fails it), every Python example of the README and the docs runs (those that need real datasets say
so on their first line), every `dada-fastai` command they show parses, and every name they import exists."""
from __future__ import annotations

import ast
import importlib
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / 'README.md', *sorted((ROOT / 'docs').glob('*.md'))]
NEEDS_DATA = '# needs real data'  # the first line of an example the tests cannot run (no dataset here)


def _blocks(page: Path, language: str) -> list[str]:
    return re.findall(rf'```{language}\n(.*?)```', page.read_text(encoding='utf-8'), re.S)


def test_the_readme_is_a_first_page():
    text = (ROOT / 'README.md').read_text(encoding='utf-8')
    assert len(text.splitlines()) <= 200
    for needed in ('<!-- test-command -->', 'dada-fastai train', 'synthia2cityscapes', 'cite', 'mkdocs'):
        assert needed in text, needed


def test_the_documentation_builds_strictly(tmp_path):
    env = {**os.environ, 'NO_MKDOCS_2_WARNING': '1'}
    proc = subprocess.run([sys.executable, '-m', 'mkdocs', 'build', '--strict', '-d', str(tmp_path / 'site')], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    api = (tmp_path / 'site' / 'api' / 'index.html').read_text(encoding='utf-8')
    assert 'id="dada_fastai.learner.dada_learner"' in api and 'id="dada_fastai.mixing.ema_update"' in api
    notebook = tmp_path / 'site' / 'nbs' / '01_toy_walkthrough' / 'index.html'
    assert notebook.is_file() and 'dada_dataloaders' in notebook.read_text(encoding='utf-8')
    assert (tmp_path / 'site' / 'benchmarks' / 'index.html').is_file() and (tmp_path / 'site' / 'toy_gap.png').is_file()


def test_a_broken_link_fails_the_build(tmp_path):
    """`mkdocs build --strict` is what catches a broken link: a copy of the site with one fails."""
    import shutil
    copy = tmp_path / 'copy'
    shutil.copytree(ROOT / 'docs', copy / 'docs', symlinks=False)
    shutil.copy(ROOT / 'mkdocs.yml', copy / 'mkdocs.yml')
    shutil.copytree(ROOT / 'benchmarks', copy / 'benchmarks')
    (copy / 'dada_fastai').symlink_to(ROOT / 'dada_fastai')
    page = copy / 'docs' / 'proof.md'
    page.write_text(page.read_text() + '\nSee [a page that is not there](nowhere.md).\n')
    env = {**os.environ, 'NO_MKDOCS_2_WARNING': '1'}
    proc = subprocess.run([sys.executable, '-m', 'mkdocs', 'build', '--strict', '-d', str(tmp_path / 'site')],
                          cwd=copy, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode != 0 and 'nowhere.md' in proc.stderr


@pytest.mark.parametrize('page', PAGES, ids=lambda p: p.name)
def test_every_python_example_runs(page, tmp_path, monkeypatch):
    """The page's Python examples run in order in one namespace, in an empty folder (the toy pair's examples train
    for real), except those whose first line says they need real data."""
    blocks = _blocks(page, 'python')
    runnable = [b for b in blocks if not b.lstrip().startswith(NEEDS_DATA)]
    for block in blocks:
        ast.parse(block)  # every example is valid Python, run or not
    monkeypatch.chdir(tmp_path)
    namespace = {'__name__': '__docs__'}
    for block in runnable:
        exec(compile(block, f'{page.name} example', 'exec'), namespace)


def test_every_name_the_manual_imports_exists():
    found = []
    for page in PAGES:
        for block in _blocks(page, 'python'):
            for node in ast.walk(ast.parse(block)):
                if isinstance(node, ast.ImportFrom) and (node.module or '').startswith('dada_fastai'):
                    found += [(node.module, a.name) for a in node.names]
    assert len(found) >= 5
    assert [f'{m}.{n}' for m, n in found if not hasattr(importlib.import_module(m), n)] == []


def test_every_command_the_manual_shows_parses():
    """Each `dada-fastai ...` command in the shell blocks names a command and options that exist (a loop's variables
    stand for a method and a seed)."""
    from dada_fastai.cli import COMMANDS, _parser
    commands = []
    for page in PAGES:
        for block in _blocks(page, 'bash'):
            text = block.replace('\\\n', ' ').replace('$m', 'dada').replace('$s', '0')
            commands += [c.split('#')[0].strip() for c in re.findall(r'dada-fastai [^;&|\n]*', text)]
    assert len(commands) >= 15
    for command in commands:
        name, *rest = shlex.split(command)[1:]
        assert name in COMMANDS, command
        _parser(name).parse_args(rest)  # a usage mistake exits (SystemExit) and fails the test
