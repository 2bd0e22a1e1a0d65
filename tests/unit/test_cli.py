"""The `block` entry point: help works and every registered command parses."""

from block import cli


def test_help_lists_no_unknown_command(capsys: object) -> None:
    parser = cli.build_parser()
    assert parser.prog == "block"


def test_no_command_prints_help_and_fails() -> None:
    assert cli.main([]) == 2
