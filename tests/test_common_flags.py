"""Shared flags: str2bool, --help gives every flag a phrase and its default, latent aliases, run_main's errors."""

import argparse
import inspect
import os
import re
import sys

import pytest

from plugins.common.errors import InputError, run_main
from plugins.common.flags import LATENT_ALIASES, TRAIN_DEFAULTS, TRAIN_HELP, make_parser, str2bool

SCRIPTS = os.path.join(os.path.dirname(__file__), "..", "scripts")


def test_str2bool_accepts_upstream_spellings_and_refuses_others():
    assert str2bool("True") and str2bool("yes") and str2bool("1")
    assert not str2bool("False") and not str2bool("no") and not str2bool("0")
    with pytest.raises(argparse.ArgumentTypeError, match="expected True or False"):
        str2bool("maybe")


def test_help_lists_every_flag_with_default_and_aliases_parse(capsys):
    parser = make_parser("demo", TRAIN_DEFAULTS, {"use_bea": True}, aliases=LATENT_ALIASES)
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    text = capsys.readouterr().out
    for key in list(TRAIN_DEFAULTS) + ["use_bea"]:
        assert f"--{key}" in text
    assert "(default: 0.0001)" in text and "--max_train_steps" in text
    args = parser.parse_args(["--max_train_steps", "7", "--learning_rate", "0.5", "--use_bea", "False"])
    assert args.max_steps == 7 and args.lr == 0.5 and args.use_bea is False


def test_run_main_prints_one_line_and_exits_2(capsys):
    def bad(_argv):
        raise InputError("--lr: expected a positive number, got -1")

    assert run_main(bad) == 2
    assert capsys.readouterr().err == "error: --lr: expected a positive number, got -1\n"
    assert run_main(lambda argv: None) == 0


def test_phrases_print_before_the_default(capsys):
    parser = make_parser("demo", TRAIN_DEFAULTS, phrases=(TRAIN_HELP, {"lr": "step size"}))
    text = parser.format_help()
    assert "step size (default: 0.0001)" in text and "training samples per step (default: 1)" in text


ENTRY_POINTS = sorted(os.path.splitext(name)[0] for name in os.listdir(SCRIPTS)
                      if name.endswith(".py") and name != "launch.py")  # launch: accelerate's own parser


def test_every_entry_point_gives_every_flag_a_phrase(load_script, monkeypatch, capsys):
    """``--help`` of each script in scripts/, in process: each flag's help is more than its default."""
    shown = []
    print_help = argparse.ArgumentParser.print_help

    def record(parser, file=None):
        shown.append(parser)
        print_help(parser, file)

    monkeypatch.setattr(argparse.ArgumentParser, "print_help", record)
    bare = {}
    for name in ENTRY_POINTS:
        main = load_script(name).main
        monkeypatch.setattr(sys, "argv", [f"{name}.py", "--help"])
        shown.clear()
        with pytest.raises(SystemExit) as exit_:
            main(["--help"]) if inspect.signature(main).parameters else main()
        assert exit_.value.code == 0 and len(shown) == 1, name
        flags = [a for a in shown[0]._actions if a.dest != "help" and a.help != argparse.SUPPRESS]
        assert flags, name
        missing = [a.option_strings[0] for a in flags if not re.sub(r"\(default: .*\)", "", a.help or "").strip()]
        if missing:
            bare[name] = missing
    capsys.readouterr()
    assert not bare, f"flags without a phrase: {bare}"
