"""The CLI's table of commands (``streamrec.cli.COMMANDS``) agrees with the command modules, and
``streamrec --help`` lists every command without importing any of them (start-up stays fast)."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest
import typer

from streamrec.cli import COMMANDS, load_command

OURS_BELOW_THE_CLI = ("tools", "models", "online_state", "streams", "serving")


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_listed_command_loads_with_the_help_it_is_listed_with(name: str) -> None:
    command = load_command(name)
    assert command.name == name
    assert (command.help or "").split("\n\n")[0].strip() == COMMANDS[name].help


def test_every_command_of_the_modules_is_listed() -> None:
    registered: set[str] = set()
    for module in {entry.module for entry in COMMANDS.values()}:
        group = typer.Typer()
        importlib.import_module(module).register(group)
        registered |= set(typer.main.get_group(group).commands)
    assert registered == set(COMMANDS)


def test_help_lists_every_command_without_importing_them() -> None:
    probe = (
        "import sys\n"
        "from streamrec import cli\n"
        "try:\n"
        "    cli.app(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print('LOADED', sorted({{m.split('.')[0] for m in sys.modules}} & {set(OURS_BELOW_THE_CLI)!r}))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True,
                          env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"})
    assert "LOADED []" in done.stdout, done.stdout[-2000:]
    for name in COMMANDS:
        assert f" {name} " in done.stdout
