"""Every command of docs/contract.md "Commands" exists, and every command has --help."""
import click
import pytest
from click.testing import CliRunner

from queuectl.cli import cli


def walk(command, path=()):
    yield path, command
    if isinstance(command, click.Group):
        for name in sorted(command.commands):
            yield from walk(command.commands[name], path + (name,))


COMMANDS = list(walk(cli))


# the commands docs/contract.md "Commands" documents
CONTRACT_COMMANDS = ["enqueue", "worker", "worker start", "worker stop", "status", "list", "show", "logs",
                     "dlq", "dlq list", "dlq retry", "cancel", "purge", "config", "config list",
                     "config get", "config set", "config unset", "wait", "retry", "pause", "resume",
                     "doctor", "fsck", "metrics", "dashboard"]


@pytest.mark.parametrize("name", CONTRACT_COMMANDS)
def test_every_contract_command_exists(name):
    assert name in {" ".join(p) for p, _ in COMMANDS}, f"missing command: {name}"


@pytest.mark.parametrize("path, command", COMMANDS, ids=[" ".join(p) or "queuectl" for p, _ in COMMANDS])
def test_every_command_has_help(path, command, tmp_path, monkeypatch):
    monkeypatch.setenv("QUEUECTL_SPOOL", str(tmp_path / "spool"))
    assert (command.help or "").strip(), f"{' '.join(path)}: no help text"
    result = CliRunner().invoke(cli, [*path, "--help"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out = result.output
    assert out.startswith("Usage:")
    first_line = command.help.strip().splitlines()[0].strip()
    assert first_line[:40] in " ".join(out.split()), f"{' '.join(path)}: help text not shown"
    if isinstance(command, click.Group):
        for name in command.commands:
            assert name in out
    assert not (tmp_path / "spool").exists(), "--help must not create the spool"
