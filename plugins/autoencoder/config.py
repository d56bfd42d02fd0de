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

#: One phrase per dotted key of :data:`DEFAULTS` (meaning, units), for ``--help``.
HELP = {
    "data.data_dir": "volume folder: images/ (+ masks/) subfolders, or a flat folder of volumes",
    "data.mask_dir": "mask folder (empty: DATA_DIR/masks when it exists)",
    "data.crop_size": "training crop (random; centre for validation), voxels: int or list per axis (null: none)",
    "data.val_fraction": "fraction of volumes held out for validation",
    "data.normalize": "intensity normalisation per volume: minmax to [0, 1] or none",
    "data.num_workers": "DataLoader worker processes (0 = load in the main process)",
    "autoencoder.spatial_dims": "2 (diffusers AutoencoderKL) or 3 (MONAI AutoencoderKL)",
    "autoencoder.in_channels": "input channels",
    "autoencoder.out_channels": "output channels",
    "autoencoder.num_channels": "channels per resolution level, a list",
    "autoencoder.latent_channels": "channels of the latent",
    "autoencoder.num_res_blocks": "residual blocks per level",
    "autoencoder.attention_levels": "self-attention per level, a list of booleans",
    "autoencoder.norm_num_groups": "GroupNorm groups (divides every channel count)",
    "autoencoder.with_encoder_nonlocal_attn": "self-attention in the encoder's middle block",
    "autoencoder.with_decoder_nonlocal_attn": "self-attention in the decoder's middle block",
    "autoencoder.training.output_dir": "run folder to write (checkpoints, config.json, metrics, samples)",
    "autoencoder.training.seed": "random seed of initialisation, split, shuffling and corruption",
    "autoencoder.training.n_epochs": "epochs to train (passes over the training volumes)",
    "autoencoder.training.max_steps": "optimizer steps after which training stops (0 = no limit)",
    "autoencoder.training.batch_size": "volumes per step (per process)",
    "autoencoder.training.learning_rate": "Adam learning rate of the autoencoder",
    "autoencoder.training.disc_learning_rate": "Adam learning rate of the patch discriminator",
    "autoencoder.training.gradient_accumulation_steps": "batches accumulated per optimizer step",
    "autoencoder.training.mixed_precision": "accelerate mixed precision: no, fp16 or bf16",
    "autoencoder.training.resume_from_checkpoint": "checkpoint-N folder or latest to resume from (empty: start fresh)",
    "autoencoder.training.checkpoints_total_limit": "checkpoints kept (older ones removed)",
    "autoencoder.training.loss.reconstruction_loss_type": "reconstruction loss: l1, mse, weighted, dice or combined",
    "autoencoder.training.loss.weighting": "fixed: plain sum; adaptive: gradient-norm ratios at the decoder's last layer",
    "autoencoder.training.loss.adaptive_max_weight": "upper bound of an adaptive weight",
    "autoencoder.training.loss.weighted.loss_type": "per-voxel error of the weighted loss: l1 or mse",
    "autoencoder.training.loss.weighted.foreground_weight": "weight of foreground voxels (target > threshold)",
    "autoencoder.training.loss.weighted.background_weight": "weight of background voxels",
    "autoencoder.training.loss.weighted.threshold": "intensity above which a target voxel is foreground",
    "autoencoder.training.loss.dice.smooth": "smoothing constant of the soft Dice",
    "autoencoder.training.loss.dice.sigmoid": "apply a sigmoid to the prediction before the Dice",
    "autoencoder.training.loss.combined.dice_weight": "weight of the Dice term of the combined loss",
    "autoencoder.training.loss.combined.recon_weight": "weight of the weighted pixel term of the combined loss",
    "autoencoder.training.loss.combined.recon_loss_type": "per-voxel error of the combined pixel term: l1 or mse",
    "autoencoder.training.loss.combined.foreground_weight": "combined loss: weight of foreground voxels",
    "autoencoder.training.loss.combined.background_weight": "combined loss: weight of background voxels",
    "autoencoder.training.loss.combined.threshold": "combined loss: intensity above which a target voxel is foreground",
    "autoencoder.training.loss.combined.dice_smooth": "combined loss: smoothing constant of the soft Dice",
    "autoencoder.training.adv_weight": "weight of the least-squares patch-adversarial loss (0 = no discriminator)",
    "autoencoder.training.disc_num_layers": "layers of the patch discriminator",
    "autoencoder.training.disc_channels": "base channels of the patch discriminator",
    "autoencoder.training.perceptual_weight": "weight of the perceptual loss (0 = off)",
    "autoencoder.training.kl_weight": "weight of the KL term of the latent",
    "autoencoder.training.perceptual.network": "MONAI perceptual network, e.g. medicalnet_resnet10_23datasets",
    "autoencoder.training.perceptual.weights": "local torch-hub folder or weights file of that network",
    "autoencoder.training.perceptual.is_fake_3d": "3D perceptual loss from 2D slices of the volume",
    "autoencoder.training.perceptual.fake_3d_ratio": "fraction of slices used by the fake-3D perceptual loss",
    "autoencoder.training.use_gradient_checkpointing": "gradient checkpointing: less memory, more compute",
    "autoencoder.training.autoencoder_warm_up_n_epochs": "epochs before the adversarial terms start",
    "autoencoder.training.denoising.enabled": "train on corrupted inputs, scored against the clean ones",
    "autoencoder.training.denoising.noise_type": "corruption: gaussian, dropout or mixed",
    "autoencoder.training.denoising.noise_std": "standard deviation of the gaussian corruption, intensity units",
    "autoencoder.training.denoising.dropout_prob": "probability of zeroing a voxel in the dropout corruption",
    "autoencoder.training.val_interval": "epochs between validations",
    "autoencoder.training.save_interval": "epochs between checkpoints",
    "autoencoder.training.fast_dev_run": "smoke run: only fast_dev_run_batches batches per epoch",
    "autoencoder.training.fast_dev_run_batches": "batches per epoch in a fast_dev_run",
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
