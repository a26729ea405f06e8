"""`gmnr --help` and every subcommand's `--help`: each says what the command does, shows an example
command line that the parser accepts, and exits 0; every subcommand has its handler registered."""
import argparse
import shlex
import subprocess
import sys

import pytest

from gmnr import cli
from tests.conftest import ROOT, env_with_venv


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = cli._parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


COMMANDS = sorted(_subcommands())


def _example_argv(example_line: str) -> list[str]:
    """The arguments after ``gmnr`` of an example line, without its trailing ``# comment``."""
    words = shlex.split(example_line, comments=True)
    assert words[0] == "gmnr", f"an example starts with `gmnr`: {example_line!r}"
    return words[1:]


def test_gmnr_help_runs_as_a_program_lists_every_command_and_shows_examples():
    done = subprocess.run([sys.executable, "-m", "gmnr", "--help"], cwd=ROOT, env=env_with_venv(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    head, _, examples = done.stdout.partition("\nexamples:\n")
    assert examples, f"no examples in `gmnr --help`:\n{done.stdout}"
    for name in COMMANDS:
        assert f"    {name}" in head, f"`gmnr --help` does not list {name}"
    lines = [ln for ln in examples.splitlines() if ln.strip()]
    assert lines
    for line in lines:
        argv = _example_argv(line.strip())
        assert argv[0] in COMMANDS
        cli._parser().parse_args(argv)  # exits 2 on an option the command does not have


@pytest.mark.parametrize("name", COMMANDS)
def test_every_subcommand_help_says_what_it_does_with_an_example_and_exits_0(name, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main([name, "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: gmnr {name} ")
    described, _, example = out.partition("\nexample:\n")
    assert example, f"`gmnr {name} --help` shows no example:\n{out}"
    description = described.split("\n\n")[1]  # the paragraph after the usage lines
    assert not description.startswith("options:") and len(description.split()) >= 10, \
        f"`gmnr {name} --help` does not say what the command does:\n{out}"
    argv = _example_argv(example.strip().splitlines()[0])
    assert argv[0] == name
    args = cli._parser().parse_args(argv)  # the example is a command line the parser accepts
    assert args.command == name


@pytest.mark.parametrize("name", COMMANDS)
def test_every_subcommand_has_its_handler_registered(name):
    handler = _subcommands()[name].get_default("func")
    assert callable(handler) and handler.__name__ == f"_run_{name.replace('-', '_')}"
