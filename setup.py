"""Install dada-fastai from the metadata in settings.ini (the fastai/nbdev convention)."""
from configparser import ConfigParser

from setuptools import find_packages, setup

cfg = ConfigParser(delimiters=['='])
cfg.read('settings.ini', encoding='utf-8')
cfg = cfg['DEFAULT']

setup(
    name=cfg['lib_name'],
    version=cfg['version'],
    description=cfg['description'],
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    author=cfg['author'],
    author_email=cfg['author_email'],
    license=cfg['license'],
    keywords=cfg['keywords'].split(),
    python_requires=f">={cfg['min_python']}",
    packages=find_packages(include=[cfg['lib_path'], f"{cfg['lib_path']}.*"]),
    package_data={cfg['lib_path']: ['presets/*.yaml']},
    install_requires=cfg['requirements'].split(),
    extras_require={k[:-len('_requirements')]: cfg[k].split() for k in cfg  # dev, tensorboard, wandb, onnx, docs
                    if k.endswith('_requirements')},
    entry_points={'console_scripts': cfg['console_scripts'].split()},
    zip_safe=False,
)
