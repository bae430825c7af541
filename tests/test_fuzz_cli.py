"""Property-based fuzz of the command line: for every option of `train`, `evaluate`, `predict`, `export` and
`data-report`, values drawn from what its declaration makes invalid (wrong type, out of range, NaN/inf, empty, huge,
negative, unknown choice, paths that are files, missing or under a file) go through the parser and the option checks
(no training: reaching a command fails the test). Each must end in one line naming the option (a positional: its
value), a non-zero exit, no traceback and nothing created. `EXAMPLES` values per option; the total is printed."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, note, settings, strategies as st

from dada_fastai import cli
from dada_fastai.config import INT_MAX, MAX_SIDE, flag, option_choices, train_options, value_type

EXAMPLES = 10  # per option: about 600 cases in all, a few seconds

_TEXT = st.text(st.characters(blacklist_categories=('Cs',), blacklist_characters='\x00'), max_size=12)
_WORD = st.text('abcdefghijklmnopqrstuvwxyz_', min_size=1, max_size=10)
_NOT_A_NUMBER = st.one_of(st.just(''), _WORD.filter(lambda w: w not in ('nan', 'inf', 'infinity')).map(lambda w: 'x' + w),
                          st.sampled_from(['1,5', '--', '0x1g', '1e', '½']))


def _int_values(opt) -> st.SearchStrategy[str]:
    low = opt.low if opt.low is not None else (opt.above + 1 if opt.above is not None else None)
    high = opt.high if opt.high is not None else INT_MAX
    parts = [_NOT_A_NUMBER, st.sampled_from(['nan', 'inf', '-inf', '1.5', '2.0e0.5']),
             st.integers(min_value=int(high) + 1).map(str), st.integers(min_value=10 ** 20).map(str),
             st.floats(allow_nan=False, allow_infinity=False).filter(lambda x: not x.is_integer()).map(repr)]
    if low is not None:
        parts.append(st.integers(max_value=int(low) - 1).map(str))
    return st.one_of(parts)


def _float_values(opt) -> st.SearchStrategy[str]:
    parts = [_NOT_A_NUMBER, st.sampled_from(['nan', 'NaN', 'inf', '-inf', '1e999', '-1e999'])]
    if opt.above is not None:
        parts.append(st.floats(max_value=opt.above, allow_nan=False, allow_infinity=False).map(repr))
    if opt.low is not None:
        parts.append(st.floats(max_value=opt.low, exclude_max=True, allow_nan=False, allow_infinity=False).map(repr))
    if opt.high is not None:
        parts.append(st.floats(min_value=opt.high, exclude_min=True, allow_nan=False, allow_infinity=False).map(repr))
    return st.one_of(parts)


def _path_values(world: Path) -> st.SearchStrategy[str]:
    """Paths that are missing, a file where a folder is needed, under a file, or an empty folder."""
    return st.one_of(_WORD.map(lambda w: str(world / 'missing' / w)), st.just(str(world / 'a_file')),
                     _WORD.map(lambda w: str(world / 'a_file' / w)), st.just(str(world / 'empty_dir')), st.just(''))


_RULE_VALUES = {  # invalid values for string options, by the rule that checks them
    'dataset_spec_rule': st.one_of(_WORD, _WORD.map(lambda w: f'carla{w}:/data'), st.just('synthia:'), st.just(':x'),
                                   st.just('')),
    'size_rule': st.one_of(st.just(''), _WORD.map(lambda w: 'q' + w), st.sampled_from(['--', '1e', '½', '1,5,3']),
                           st.sampled_from(['0x5', '5x0', '-3x4', '12by40', '1.5x2', 'x', '3x4x5']),
                           st.integers(min_value=MAX_SIDE + 1).map(lambda n: f'{n}x{n}')),
    'device_rule': st.one_of(st.sampled_from(['gpu', 'cuda:', 'cuda:x', 'CPU', 'tpu', 'cuda:-1', '']),
                             _WORD.map(lambda w: 'dev' + w)),
    'log_rule': st.one_of(st.sampled_from(['tb', 'tensorboard;wandb', 'wandb,', '']), _WORD.map(lambda w: 'log' + w)),
    'arch_rule': st.one_of(_WORD.map(lambda w: f'no_such_model_{w}'), st.just('')),
    'formats_rule': st.one_of(st.sampled_from(['', ',', 'colour', 'color,', 'label_ids', 'png', 'color;depth']),
                              _WORD.map(lambda w: 'color,x' + w)),
    'scales_rule': st.one_of(st.sampled_from(['', '0', '-1', '1,,2', 'nan', 'inf', '0.05', '4.5', '1;2', 'x']),
                             st.floats(max_value=0.1, exclude_max=True).map(repr),
                             st.floats(min_value=4, exclude_min=True).map(repr)),
}


def _strategy(name: str, kind, opt, world: Path) -> st.SearchStrategy[str]:
    """Invalid command-line values for an option, from its declaration (type, range, choices, rule)."""
    choices = option_choices(kind, opt)
    vtype = value_type(kind)
    if vtype is bool:
        return st.one_of(_WORD, st.just('')).map(lambda w: f'={w}')  # `--flag=value`: a toggle takes none
    if choices is not None:
        if vtype is int:
            return st.one_of(st.integers().filter(lambda n: n not in choices).map(str), _NOT_A_NUMBER)
        return _TEXT.filter(lambda t: t not in choices)
    if vtype is int:
        return _int_values(opt)
    if vtype is float:
        return _float_values(opt)
    rule = getattr(opt.check, '__name__', '')
    if rule in _RULE_VALUES:
        return _RULE_VALUES[rule]
    if rule == 'preset_rule':
        return st.one_of(_path_values(world), _WORD.map(lambda w: f'no_such_preset_{w}'),
                         st.binary(max_size=40).map(lambda b: ('write', b'\xff' + b)),
                         _TEXT.map(lambda t: ('write', f'- {t!r}\n'.encode())))
    assert rule in ('out_folder_rule', 'out_file_rule', 'weights_rule', 'run_folder_rule', 'model_file_rule'), (name,
                                                                                                                rule)
    if rule == 'out_file_rule':  # a folder, or a file under a file
        return st.one_of(st.just(str(world / 'empty_dir')), _WORD.map(lambda w: str(world / 'a_file' / w)),
                         _WORD.map(lambda w: str(world / 'a_file' / w / 'x.onnx')))
    if rule == 'out_folder_rule':
        return st.one_of(st.just(str(world / 'a_file')), _WORD.map(lambda w: str(world / 'a_file' / w)))
    if rule in ('weights_rule', 'model_file_rule'):  # a file is what they take (its content is checked on loading)
        return _path_values(world).filter(lambda p: p != str(world / 'a_file'))
    return _path_values(world)


def _options(world: Path):
    """(command, option name or positional, leading arguments, strategy, positional) for every option."""
    leads = {'train': [], 'evaluate': [str(world / 'no_run')], 'predict': [str(world / 'no_run'), 'x.png'],
             'export': [str(world / 'no_run')], 'data-report': ['--source', 'synthia:/s', '--target', 'cityscapes:/t']}
    for name, (kind, opt) in train_options().items():
        if opt.cli:
            yield 'train', name, [], _strategy(name, kind, opt, world), False
    for command in ('train', 'evaluate', 'predict', 'export', 'data-report'):
        for name, (kind, opt) in cli._declared(cli.COMMANDS[command]).items():
            lead = leads[command]
            if flag(name) in lead:  # the fuzzed option replaces its valid value
                i = lead.index(flag(name))
                lead = lead[:i] + lead[i + 2:]
            yield command, name, lead, _strategy(name, kind, opt, world), False
    missing = _path_values(world).filter(lambda p: p and p != str(world / 'a_file'))
    yield 'evaluate', 'model', [], missing, True
    yield 'predict', 'inputs', [str(world / 'no_run')], missing, True
    yield 'export', 'model', [], missing, True


@pytest.fixture
def world(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'a_file').write_text('not a folder')
    (tmp_path / 'empty_dir').mkdir()

    def reached(*args, **kwargs):
        raise AssertionError('an invalid value reached the command')
    import dada_fastai.inference as inference
    import dada_fastai.runs as runs
    for module, name in ((runs, 'train'), (runs, 'resume'), (inference, 'DADA')):  # no model file loads here
        monkeypatch.setattr(module, name, reached)
    return tmp_path


def _tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob('*')}


def test_every_option_refuses_invalid_values_in_one_line(world, capsys):
    cases, options, started = 0, 0, time.time()
    before = _tree(world)
    for command, name, lead, strategy, positional in _options(world):
        options += 1

        @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=False,
                  suppress_health_check=list(HealthCheck))
        @given(value=strategy)
        def refuses(value):
            nonlocal cases
            cases += 1
            note(f'{command} {flag(name)}')
            if isinstance(value, tuple):  # file content: the option takes its path
                (world / 'drawn.yaml').write_bytes(value[1])
                value = str(world / 'drawn.yaml')
            if positional:
                args = [command, *lead, value]
            elif value.startswith('='):
                args = [command, *lead, flag(name) + value]
            else:
                args = [command, *lead, flag(name), value]
            capsys.readouterr()
            with pytest.raises(SystemExit) as e:
                cli.main(args)
            err = capsys.readouterr().err.strip()
            where = f'{command} {name}={value!r}'
            assert e.value.code != 0, where
            assert err.startswith('dada-fastai: error:') and '\n' not in err and 'Traceback' not in err, (where, err)
            named = value in err or repr(value) in err if positional else flag(name) in err
            assert named, (where, err)
            (world / 'drawn.yaml').unlink(missing_ok=True)
            assert _tree(world) == before, (where, _tree(world) - before)
        refuses()
    seconds = time.time() - started
    with capsys.disabled():
        print(f'\ncommand-line fuzz: {cases} invalid values over {options} options in {seconds:.1f} s')
    assert cases >= options * 2
