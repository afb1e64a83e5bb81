"""``peregrine <command>``: every command is found and runs; unknown ones are refused with the list."""

from __future__ import annotations

import importlib

import pytest
from peregrine.server.commands import COMMANDS, main


def test_every_command_imports_and_answers_help(capsys: pytest.CaptureFixture[str]) -> None:
    for name, (module, _, _) in COMMANDS.items():
        assert callable(importlib.import_module(module).main), name
        with pytest.raises(SystemExit) as e:  # argparse exits 0 after --help
            main([name, "--help"])
        assert e.value.code == 0, name
        assert "usage" in capsys.readouterr().out.lower(), name


def test_usage_and_unknown_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS)
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err
    assert main([]) == 2
