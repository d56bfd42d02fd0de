"""Flags of ``scripts/train_autoencoder.py``: a YAML config plus overrides.

``--config FILE`` is read first; then every key of the configuration is a
flag named by its dotted path (``--autoencoder.training.loss.weighted.threshold
0.05``) whose default is the value in FILE, and the common training flags
(``--data_dir``, ``--out_dir``, ``--max_steps``, ``--seed``,
``--resume_checkpoint``, ``--batch_size``, ``--lr`` and their diffusers
spellings) set their config paths (:data:`FLAG_PATHS`). Values are read as
YAML (``[16, 32]``, ``true``, ``1e-4``). Unknown flags are refused with the
valid ones listed.
"""

from __future__ import annotations

import argparse

from plugins.autoencoder.config import FLAG_PATHS, HELP, flatten, load_config, parse_value, set_path, validate
from plugins.common.errors import InputError
from plugins.common.flags import LATENT_ALIASES, make_parser

DEFAULT_CONFIG = "config/ldm_config_local.yaml"
DESCRIPTION = "Train an AutoencoderKL (3D MONAI / 2D diffusers) with imbalance-aware reconstruction losses."


def _get(cfg: dict, path: str):
    for part in path.split("."):
        cfg = cfg[part]
    return cfg


def build_parser(cfg: dict, config_path: str, suppress: bool = False) -> argparse.ArgumentParser:
    """One flag per common training flag and per dotted config key, defaults from ``cfg``."""
    common = {"config": config_path, **{flag: _get(cfg, path) for flag, path in FLAG_PATHS.items()}}
    phrases = {"config": "YAML configuration read first (its values are the defaults below)",
               **{flag: HELP[path] for flag, path in FLAG_PATHS.items()}}
    parser = make_parser(DESCRIPTION, common, aliases=LATENT_ALIASES, phrases=(phrases,))
    for path, default in flatten(cfg).items():
        kind = str if isinstance(default, str) else parse_value
        parser.add_argument(f"--{path}", dest=path, default=default, type=kind,
                            help=f"{HELP[path]} (default: {default!r})")
    if suppress:
        for action in parser._actions:
            action.default = argparse.SUPPRESS
    return parser


def resolve_config(argv=None) -> dict:
    """The validated configuration: YAML, then dotted flags, then common flags, in that order."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=DEFAULT_CONFIG)
    config_path = pre.parse_known_args(argv)[0].config
    cfg = load_config(config_path)
    parser = build_parser(cfg, config_path)
    _, unknown = parser.parse_known_args(argv)  # --help exits here with every flag and its default
    if unknown:
        flags = sorted(["--" + p for p in flatten(cfg)] + ["--" + f for f in FLAG_PATHS])
        raise InputError(f"unknown argument(s) {' '.join(unknown)}; valid flags: {', '.join(flags)}")
    given = vars(build_parser(cfg, config_path, suppress=True).parse_known_args(argv)[0])
    given.pop("config", None)
    for key in sorted(given, key=lambda k: k in FLAG_PATHS):
        set_path(cfg, FLAG_PATHS.get(key, key), given[key], source=f"--{key}")
    return validate(cfg)
