"""The data report's former module name: `dada_fastai.data_report` is its home."""
from .data_report import data_report, print_report

__all__ = ['data_report', 'print_report']
