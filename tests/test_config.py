"""Training options as one table (`config.TrainConfig`): the command line, presets and error messages come from it,
and every value is checked where its option is declared, before any data is read or folder created."""
from __future__ import annotations

import dataclasses

import pytest

from dada_fastai import cli, config, runs
from dada_fastai.cli import main
from dada_fastai.config import ConfigError, TrainConfig, option, resolve_config, train_options


@pytest.fixture
def no_training(monkeypatch, tmp_path):
    """Run the command line in an empty folder where reaching training, evaluation or prediction fails the test."""
    monkeypatch.chdir(tmp_path)

    def reached(*args, **kwargs):
        raise AssertionError('an invalid option reached the command')
    import dada_fastai.inference as inference
    for module, name in ((runs, 'train'), (runs, 'resume'), (inference, 'evaluate_model'),
                         (inference, 'predict_files')):
        monkeypatch.setattr(module, name, reached)
    return tmp_path


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith('dada-fastai: error:') and '\n' not in err and 'Traceback' not in err, err
    return err


@pytest.mark.parametrize('flag, value, valid', [
    ('--val-max', '0', 'a positive integer'),
    ('--workers', '-2', 'an integer from 0 to 256'),
    ('--eval-every', '-3', 'a positive integer'),
    ('--checkpoint-every', '-1', 'an integer >= 0'),
    ('--lr', 'nan', 'a positive number'),
    ('--seed', '-1', 'an integer from 0 to 4294967295'),
])
def test_the_six_values_that_used_to_crash_or_train(flag, value, valid, no_training, capsys):
    """Each ends in one line naming the option, the value and what is valid, before any data or folder."""
    with pytest.raises(SystemExit) as e:
        main(['train', flag, value])
    assert e.value.code == 1
    err = _one_line(capsys)
    assert f'{flag} must be {valid}, not {value}' in err, err
    assert not any(no_training.iterdir())


def test_presets_are_checked_by_the_same_table(tmp_path):
    preset = tmp_path / 'mine.yaml'
    preset.write_text('workers: -2\n')
    with pytest.raises(ConfigError, match=f'workers must be an integer from 0 to 256 in {preset}, not -2'):
        resolve_config(preset)
    preset.write_text('lr: .nan\n')
    with pytest.raises(ConfigError, match='lr must be a positive number'):
        resolve_config(preset)
    preset.write_text('schedule: linear\n')
    with pytest.raises(ConfigError, match="invalid schedule 'linear' in .*; valid: poly, one_cycle, flat_cos, constant"):
        resolve_config(preset)


def test_every_option_is_declared_once_with_its_type_default_and_help():
    """The command line's flags, their choices and help are the fields' own."""
    parser = cli._parser('train')
    actions = {a.dest: a for a in parser._actions}
    for f in dataclasses.fields(TrainConfig):
        kind, opt = train_options()[f.name]
        assert opt.help and f.default is not dataclasses.MISSING
        if not opt.cli:
            assert f.name not in actions
            continue
        action = actions[f.name]
        assert action.option_strings[0] == '--' + f.name.replace('_', '-') and action.default is None
        assert action.help.startswith(opt.help)
        choices = config.option_choices(kind, opt)
        assert (list(action.choices) if action.choices else None) == (list(choices) if choices else None)
    assert list(actions['schedule'].choices) == ['poly', 'one_cycle', 'flat_cos', 'constant']


def test_adding_an_option_is_one_field(monkeypatch):
    """A new field of TrainConfig is a command-line flag with its help, checked with its range, in presets too."""
    @dataclasses.dataclass
    class Extended(TrainConfig):
        warmup: int = option(0, 'iterations of linear learning-rate warm-up', low=0, high=1000)
    monkeypatch.setattr(config, 'TrainConfig', Extended)
    action = next(a for a in cli._parser('train')._actions if a.dest == 'warmup')
    assert action.option_strings == ['--warmup'] and action.help.startswith('iterations of linear')
    args = vars(cli._parser('train').parse_args(['--warmup', '10']))
    assert args['warmup'] == 10
    assert resolve_config(warmup=10).warmup == 10
    with pytest.raises(ConfigError, match='--warmup must be an integer from 0 to 1000, not 5000'):
        resolve_config(warmup=5000)


@pytest.mark.parametrize('args, words', [
    (['evaluate', 'run', '--max-images', '0'], '--max-images must be a positive integer, not 0'),
    (['evaluate', 'run', '--target-size', '0x5'], '--target-size must be HxW'),
    (['evaluate', 'run', '--target', 'carla:/x'], '--target must be KIND:DIR'),
    (['predict', 'run', 'x.png', '--size', '12by40'], '--size must be HxW'),
    (['predict', 'run', 'x.png', '--device', 'gpu'], '--device must be auto, cpu, cuda or cuda:N'),
    (['data-report', '--source', 'synthia', '--target', 'cityscapes:/x'], '--source must be KIND:DIR'),
])
def test_evaluation_and_prediction_options_are_checked_where_declared(args, words, no_training, capsys):
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 1 and words in _one_line(capsys)


def test_predict_out_must_be_a_folder(no_training, capsys):
    (no_training / 'taken').write_text('a file')
    with pytest.raises(SystemExit):
        main(['predict', 'run', 'x.png', '--out', 'taken'])
    assert '--out must be a folder (this is a file)' in _one_line(capsys)
    with pytest.raises(SystemExit):
        main(['predict', 'run', 'x.png', '--out', 'taken/inside'])
    assert 'taken is a file' in _one_line(capsys)
    assert sorted(p.name for p in no_training.iterdir()) == ['taken']


def test_user_errors_are_one_family_and_bugs_keep_their_traceback(no_training, monkeypatch, capsys):
    from dada_fastai.callbacks import NonFiniteLoss
    from dada_fastai.checkpoint import CheckpointError
    from dada_fastai.datasets import DatasetError
    from dada_fastai.errors import UserError
    from dada_fastai.model import WeightsError
    from dada_fastai.runs import RunError
    for kind in (DatasetError, ConfigError, WeightsError, CheckpointError, RunError, NonFiniteLoss):
        assert issubclass(kind, UserError), kind
    import dada_fastai.inference as inference

    def bug(*args, **kwargs):
        raise ValueError('a programming error')
    monkeypatch.setattr(inference, 'evaluate_model', bug)
    with pytest.raises(ValueError, match='a programming error'):
        main(['evaluate', 'run'])

    def user(*args, **kwargs):
        raise DatasetError('a user error')
    monkeypatch.setattr(inference, 'evaluate_model', user)
    with pytest.raises(SystemExit):
        main(['evaluate', 'run'])
    assert 'a user error' in _one_line(capsys)


def test_usage_mistakes_are_one_line(no_training, capsys):
    for args, words in ((['train', '--no-such-option'], 'unrecognized arguments: --no-such-option'),
                        (['train', '--iters', 'many'], "argument --iters: invalid int value: 'many'"),
                        (['train', '--augment=yes'], 'argument --augment'),
                        (['evaluate', 'run', '--classes', '19'], 'argument --classes: invalid choice: 19')):
        with pytest.raises(SystemExit) as e:
            main(args)
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and '\n' not in err and words in err, err
