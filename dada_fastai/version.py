"""The package's version: settings.ini's in a checkout or an editable install, else the installed distribution's."""
from __future__ import annotations

from pathlib import Path

__all__ = ['__version__', 'package_version']


def package_version() -> str:
    """The version in settings.ini (a checkout or an editable install), else the installed package's."""
    from configparser import ConfigParser
    ini = Path(__file__).resolve().parent.parent / 'settings.ini'
    if ini.is_file():
        cfg = ConfigParser(delimiters=['='])
        cfg.read(ini, encoding='utf-8')
        ours = cfg.get('DEFAULT', 'lib_path', fallback=None) == __package__
        if ours and cfg.get('DEFAULT', 'version', fallback=None):
            return cfg['DEFAULT']['version']
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version('dada-fastai')
    except PackageNotFoundError:
        return '0+unknown'


__version__ = package_version()
