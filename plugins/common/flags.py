"""Flags shared by every entry point, in the style of guided-diffusion's ``script_util``.

One defaults dict per script becomes its flags (``--key value``), so a script's
flags and its saved ``config.json`` are the same dict. Booleans take
``True``/``False`` (also yes/no, 1/0) like upstream's ``str2bool``. Each
defaults dict has a phrase dict beside it (``TRAIN_HELP`` beside
``TRAIN_DEFAULTS``, ...): ``--help`` prints "<phrase> (default: ...)" for every
flag. Phrases are argparse help strings (a literal percent sign is ``%%``). Latent (accelerate) scripts also accept the
diffusers-examples spellings listed in :data:`LATENT_ALIASES`.
"""

from __future__ import annotations

import argparse
import re

_NUMBER = r"(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?"
#: What argparse takes for a value, not a flag: a negative number, exponents included ("-1e-4"), or a
#: comma list starting with one ("-1,1"); argparse's own pattern misses both.
NEGATIVE_NUMBER = re.compile(rf"^-{_NUMBER}(,-?{_NUMBER})*$")

#: Flags every training script takes, with neutral defaults a script overrides.
TRAIN_DEFAULTS = dict(
    data_dir="",
    out_dir="",
    max_steps=0,
    seed=0,
    resume_checkpoint="",
    batch_size=1,
    lr=1e-4,
)

#: One phrase per flag of ``TRAIN_DEFAULTS`` (meaning, units), for ``--help``.
TRAIN_HELP = dict(
    data_dir="training data folder",
    out_dir="run folder to write (checkpoints, config.json, metrics)",
    max_steps="training steps (optimizer updates) to run; 0 = no limit",
    seed="random seed of initialisation, shuffling and noise",
    resume_checkpoint="checkpoint to resume from (empty: start fresh)",
    batch_size="training samples per step",
    lr="learning rate of the optimizer",
)

#: Flags every sampling or evaluation script takes.
EVAL_DEFAULTS = dict(model_path="", data_dir="", out_dir="")
#: One phrase per flag of ``EVAL_DEFAULTS``.
EVAL_HELP = dict(
    model_path="trained checkpoint (or its run folder) to evaluate",
    data_dir="data folder to evaluate on",
    out_dir="output folder of the evaluation (metrics.json, cases.csv, images)",
)

#: diffusers-examples names accepted by the accelerate-launched latent scripts.
LATENT_ALIASES = {
    "out_dir": "--output_dir",
    "max_steps": "--max_train_steps",
    "resume_checkpoint": "--resume_from_checkpoint",
    "batch_size": "--train_batch_size",
    "lr": "--learning_rate",
}


def str2bool(value) -> bool:
    """``True``/``False`` (any case), yes/no, y/n, 1/0 -> bool; anything else is refused."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "y", "1"):
        return True
    if text in ("false", "no", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {value!r}")


def _flag_type(default):
    if default is None:
        return str
    if isinstance(default, bool):
        return str2bool
    return type(default)


def add_dict_to_argparser(parser: argparse.ArgumentParser, defaults: dict, aliases: dict | None = None,
                          phrases: dict | None = None):
    """Add ``--key`` for every entry of ``defaults`` (type from the default value), helped by ``phrases[key]``."""
    aliases = aliases or {}
    phrases = phrases or {}
    for key, default in defaults.items():
        names = [f"--{key}"] + ([aliases[key]] if key in aliases else [])
        phrase = phrases.get(key, "")
        parser.add_argument(*names, dest=key, default=default, type=_flag_type(default),
                            help=f"{phrase} (default: {default!r})".lstrip())
    return parser


def args_to_dict(args: argparse.Namespace, keys) -> dict:
    return {k: getattr(args, k) for k in keys}


def make_parser(description: str, *default_dicts: dict, aliases: dict | None = None,
                phrases: tuple[dict, ...] = ()) -> argparse.ArgumentParser:
    """A parser with one flag per key of the merged ``default_dicts`` (later dicts win).

    ``phrases``: the phrase dicts beside those defaults dicts (later dicts win).
    """
    merged: dict = {}
    for d in default_dicts:
        merged.update(d)
    merged_phrases: dict = {}
    for d in phrases:
        merged_phrases.update(d)
    parser = argparse.ArgumentParser(description=description)
    parser._negative_number_matcher = NEGATIVE_NUMBER  # "--lr -1e-4" is a value, refused by the script's check
    return add_dict_to_argparser(parser, merged, aliases, merged_phrases)
