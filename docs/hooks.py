"""MkDocs hook: the benchmarks' README (the scripts' measured figures and the toy pair's research log) is a page of the
site as it is in the repository, its pictures with it; the tutorials of nbs/ are pages under nbs/."""
from __future__ import annotations

from pathlib import Path

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]


@event_priority(100)  # before mkdocs-jupyter's, which turns the notebooks into pages
def on_files(files, config):
    """Add benchmarks/README.md as `benchmarks.md`, the pictures it shows, and each notebook of nbs/."""
    site = config['site_dir']
    files.append(File.generated(config, 'benchmarks.md', content=_benchmarks_page()))
    for notebook in sorted((ROOT / 'nbs').glob('*.ipynb')):
        files.append(File(f'nbs/{notebook.name}', str(ROOT), site, config['use_directory_urls']))
    for picture in sorted((ROOT / 'benchmarks').glob('*.png')):
        files.append(File(picture.name, str(picture.parent), site, config['use_directory_urls']))
    return files


def _benchmarks_page() -> str:
    """benchmarks/README.md with its links written for the site: a picture of docs/ is beside the page there."""
    text = (ROOT / 'benchmarks' / 'README.md').read_text(encoding='utf-8')
    return text.replace('](../docs/', '](')
