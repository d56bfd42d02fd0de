"""The autoencoder configuration: defaults, YAML merge, dotted overrides, validation.

The YAML shape is seed 001's (``autoencoder: {model keys, training: {...,
loss: {...}}}``) plus a ``data:`` section. :data:`DEFAULTS` lists every valid
key; a YAML or override key that is not in it is refused with the valid keys
of its section. Dotted paths (``autoencoder.training.loss.weighted.threshold``)
are the flag names of ``scripts/train_autoencoder.py``.
"""

from __future__ import annotations

import copy

import yaml

from plugins.common.errors import InputError
from plugins.common.yaml_io import safe_load_unique

DEFAULTS: dict = {
    "data": {
        "data_dir": "data/demo/filaments",  # images/ (+ masks/) subfolders, or a flat folder of volumes
        "mask_dir": "",  # default: data_dir/masks when it exists
        "crop_size": None,  # int or list; required when volumes differ in shape
        "val_fraction": 0.25,
        "normalize": "minmax",  # minmax | none
        "num_workers": 0,
    },
    "autoencoder": {
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": 1,
        "num_channels": [32, 64, 128],
        "latent_channels": 16,
        "num_res_blocks": 1,
        "attention_levels": [False, False, False],
        "norm_num_groups": 32,
        "with_encoder_nonlocal_attn": False,
        "with_decoder_nonlocal_attn": False,
        "training": {
            "output_dir": "runs/autoencoder",
            "seed": 0,
            "n_epochs": 500,
            "max_steps": 0,  # 0: no limit; otherwise stop after this many optimizer steps
            "batch_size": 1,
            "learning_rate": 1.0e-4,
            "disc_learning_rate": 5.0e-4,
            "gradient_accumulation_steps": 1,
            "mixed_precision": "no",  # no | fp16 | bf16
            "resume_from_checkpoint": "",  # "" | latest | path to a checkpoint-N folder
            "checkpoints_total_limit": 3,
            "loss": {
                "reconstruction_loss_type": "combined",
                "weighting": "fixed",  # fixed | adaptive
                "adaptive_max_weight": 1.0e4,
                "weighted": {"loss_type": "l1", "foreground_weight": 20.0, "background_weight": 1.0,
                             "threshold": 0.1},
                "dice": {"smooth": 1.0e-5, "sigmoid": False},
                "combined": {"dice_weight": 1.0, "recon_weight": 1.0, "recon_loss_type": "l1",
                             "foreground_weight": 20.0, "background_weight": 1.0, "threshold": 0.1,
                             "dice_smooth": 1.0e-5},
            },
            "adv_weight": 0.01,
            "disc_num_layers": 3,
            "disc_channels": 32,
            "perceptual_weight": 0.001,
            "kl_weight": 1.0e-6,
            "perceptual": {
                "network": "medicalnet_resnet10_23datasets",
                "weights": "",  # local torch-hub folder (medicalnet/radimagenet) or weights file (resnet50)
                "is_fake_3d": False,
                "fake_3d_ratio": 0.5,
            },
            "use_gradient_checkpointing": True,
            "autoencoder_warm_up_n_epochs": 50,
            "denoising": {"enabled": True, "noise_type": "mixed", "noise_std": 0.03, "dropout_prob": 0.1},
            "val_interval": 5,
            "save_interval": 10,
            "fast_dev_run": False,
            "fast_dev_run_batches": 10,
        },
    },
}

#: The common training flags of every script, as dotted config paths.
FLAG_PATHS = {
    "data_dir": "data.data_dir",
    "out_dir": "autoencoder.training.output_dir",
    "max_steps": "autoencoder.training.max_steps",
    "seed": "autoencoder.training.seed",
    "resume_checkpoint": "autoencoder.training.resume_from_checkpoint",
    "batch_size": "autoencoder.training.batch_size",
    "lr": "autoencoder.training.learning_rate",
}

_CHOICES = {
    "data.normalize": ("minmax", "none"),
    "autoencoder.spatial_dims": (2, 3),
    "autoencoder.training.mixed_precision": ("no", "fp16", "bf16"),
    "autoencoder.training.loss.reconstruction_loss_type": ("l1", "mse", "weighted", "dice", "combined"),
    "autoencoder.training.loss.weighting": ("fixed", "adaptive"),
    "autoencoder.training.loss.weighted.loss_type": ("l1", "mse"),
    "autoencoder.training.loss.combined.recon_loss_type": ("l1", "mse"),
    "autoencoder.training.denoising.noise_type": ("gaussian", "dropout", "mixed"),
}

_NONNEGATIVE = ("_weight", "noise_std", "dropout_prob", "learning_rate", "smooth", "max_steps",
                "warm_up_n_epochs", "val_fraction", "num_workers")
_POSITIVE = ("n_epochs", "batch_size", "val_interval", "save_interval", "fast_dev_run_batches",
             "gradient_accumulation_steps", "in_channels", "out_channels", "latent_channels",
             "norm_num_groups", "num_res_blocks", "checkpoints_total_limit", "disc_num_layers",
             "disc_channels")


def flatten(cfg: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    out = {}
    for key, value in cfg.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


def _merge(base: dict, update: dict, where: str, source: str) -> None:
    for key, value in update.items():
        path = f"{where}{key}"
        if key not in base:
            section = where.rstrip(".") or "top level"
            raise InputError(f"{source}: unknown key {path!r}; valid keys in {section}: {', '.join(sorted(base))}")
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise InputError(f"{source}: {path} must be a mapping with keys {', '.join(sorted(base[key]))}")
            _merge(base[key], value, path + ".", source)
        else:
            base[key] = value


def set_path(cfg: dict, path: str, value, source: str = "override") -> None:
    """Set a dotted ``path`` of ``cfg``; unknown paths are refused with the valid keys."""
    node: dict = {}
    cursor = node
    parts = path.split(".")
    for part in parts[:-1]:
        cursor = cursor.setdefault(part, {})
    cursor[parts[-1]] = value
    _merge(cfg, node, "", source)


def load_config(path: str | None = None) -> dict:
    """DEFAULTS updated by the YAML file at ``path`` (every key checked against DEFAULTS)."""
    cfg = copy.deepcopy(DEFAULTS)
    if path:
        try:
            with open(path) as f:
                loaded = safe_load_unique(f) or {}
        except OSError as err:
            raise InputError(f"{path}: cannot read the config ({err.strerror})") from None
        except yaml.YAMLError as err:
            raise InputError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
        if not isinstance(loaded, dict):
            raise InputError(f"{path}: expected a mapping at the top level")
        _merge(cfg, loaded, "", path)
    return cfg


def validate(cfg: dict) -> dict:
    """Refuse values of the wrong kind, negative weights and unknown choices; return ``cfg``."""
    flat = flatten(cfg)
    defaults = flatten(DEFAULTS)
    for path, value in flat.items():
        default = defaults[path]
        if path in _CHOICES:
            if value not in _CHOICES[path]:
                raise InputError(f"{path}: expected one of {list(_CHOICES[path])}, got {value!r}")
            continue
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise InputError(f"{path}: expected true or false, got {value!r}")
        elif isinstance(default, (int, float)):
            if isinstance(value, str):
                value = _as_number(value)
                set_path(cfg, path, value)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InputError(f"{path}: expected a number, got {value!r}")
            name = path.rsplit(".", 1)[-1]
            if name in _POSITIVE and value <= 0:
                raise InputError(f"{path}: expected a value > 0, got {value}")
            if name.endswith(_NONNEGATIVE) and value < 0:
                raise InputError(f"{path}: expected a value >= 0, got {value}")
        elif isinstance(default, str) and not isinstance(value, str):
            raise InputError(f"{path}: expected a string, got {value!r}")
        elif isinstance(default, list) and not isinstance(value, list):
            raise InputError(f"{path}: expected a list such as {default!r} (on the command line quoted, "
                             f"'[8, 16]'), got {value!r}")
    ae = cfg["autoencoder"]
    if len(ae["attention_levels"]) != len(ae["num_channels"]):
        raise InputError(f"autoencoder.attention_levels: expected {len(ae['num_channels'])} entries "
                         f"(one per num_channels entry), got {len(ae['attention_levels'])}")
    if any(c % ae["norm_num_groups"] for c in ae["num_channels"]):
        raise InputError(f"autoencoder.num_channels: every entry must be divisible by norm_num_groups="
                         f"{ae['norm_num_groups']}, got {ae['num_channels']}")
    if not 0 <= cfg["autoencoder"]["training"]["denoising"]["dropout_prob"] < 1:
        raise InputError("autoencoder.training.denoising.dropout_prob: expected a value in [0, 1)")
    crop = cfg["data"]["crop_size"]
    if crop is not None and not (isinstance(crop, int) and crop > 0 or
                                 isinstance(crop, list) and all(isinstance(c, int) and c > 0 for c in crop)):
        raise InputError(f"data.crop_size: expected a positive int or a list of positive ints, got {crop!r}")
    return cfg


def _as_number(text: str):
    """``"1e-4"`` -> 1e-4 (YAML 1.1 reads exponents without a dot as strings); other text unchanged."""
    try:
        return float(text)
    except ValueError:
        return text


def parse_value(text: str):
    """A flag value as YAML (``3`` -> int, ``[8, 16]`` -> list, ``true`` -> bool, ``l1`` -> str)."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return _as_number(value) if isinstance(value, str) else value


def dump_yaml(cfg: dict) -> str:
    return yaml.safe_dump(cfg, sort_keys=False)
