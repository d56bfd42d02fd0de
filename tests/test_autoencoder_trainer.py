"""The trainer end to end on tiny models: 3D run outputs, resume, 2D save_pretrained + scaling, refusals."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState, GradientState
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from plugins.autoencoder.cli import resolve_config
from plugins.autoencoder.models import load_autoencoder
from plugins.autoencoder.perceptual import HUB_REPO_FOLDER, build_perceptual_loss
from plugins.autoencoder.trainer import AutoencoderTrainer
from plugins.common.errors import InputError, run_main
from plugins.latent_sr import codec
from plugins.common.run_log import read_jsonl
from plugins.data.filaments import write_filament_set
from scripts.train_autoencoder import main

torch.set_num_threads(1)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = ["--autoencoder.num_channels", "[4, 8]", "--autoencoder.attention_levels", "[false, false]",
        "--autoencoder.norm_num_groups", "4", "--autoencoder.latent_channels", "2",
        "--autoencoder.training.disc_channels", "4", "--autoencoder.training.disc_num_layers", "2",
        "--autoencoder.training.perceptual_weight", "0", "--autoencoder.training.use_gradient_checkpointing",
        "false", "--autoencoder.training.val_interval", "1", "--autoencoder.training.save_interval", "1",
        "--autoencoder.training.n_epochs", "3", "--autoencoder.training.autoencoder_warm_up_n_epochs", "0",
        "--autoencoder.training.loss.weighting", "adaptive", "--autoencoder.training.learning_rate", "1e-3"]


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield


@pytest.fixture(scope="module")
def filaments(tmp_path_factory):
    out = tmp_path_factory.mktemp("filaments")
    write_filament_set(str(out), num_volumes=4, shape=(16, 16, 16), seed=0)
    return str(out)


def run(argv):
    AutoencoderTrainer(resolve_config(argv)).train()


def test_3d_run_writes_metrics_images_checkpoints_and_model(filaments, tmp_path):
    out = str(tmp_path / "run")
    run(["--data_dir", filaments, "--out_dir", out, "--max_steps", "4", *TINY])
    steps = read_jsonl(os.path.join(out, "metrics_step.jsonl"))
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert {"recon_loss", "pixel_loss", "dice_loss", "kl_loss", "adv_loss", "disc_loss", "lambda_dice",
            "lambda_adv", "total_loss"} <= set(steps[-1])
    epochs = read_jsonl(os.path.join(out, "metrics_epoch.jsonl"))
    assert {"val_fg_dice", "val_fg_recall", "val_fg_volume_ratio", "val_mask_dice"} <= set(epochs[-1])
    events = EventAccumulator(os.path.join(out, "tensorboard")).Reload()
    tags = events.Tags()
    assert {"train/step/recon_loss", "train/step/lambda_dice", "val/fg_volume_ratio"} <= set(tags["scalars"])
    assert {"val/patch_denoising", "val/patch_denoising_error"} <= set(tags["images"])
    assert sorted(os.listdir(os.path.join(out, "checkpoints"))) == ["checkpoint-3", "checkpoint-4"]
    assert json.load(open(os.path.join(out, "config.json")))["autoencoder.training.max_steps"] == 4
    model = load_autoencoder(out)
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert model.scaling_factor == pytest.approx(summary["scaling_factor"]) and model.scaling_factor > 0
    z = model.encode_latents(torch.rand(1, 1, 16, 16, 16))
    assert z.shape == (1, 2, 8, 8, 8) and model.decode_latents(z).shape == (1, 1, 16, 16, 16)


def test_resume_continues_exactly(filaments, tmp_path):
    common = ["--data_dir", filaments, *TINY, "--autoencoder.training.adv_weight", "0",
              "--autoencoder.training.save_interval", "100"]
    straight, split = str(tmp_path / "straight"), str(tmp_path / "split")
    run([*common, "--out_dir", straight, "--max_steps", "5"])
    AcceleratorState._reset_state(True)
    run([*common, "--out_dir", split, "--max_steps", "2"])
    AcceleratorState._reset_state(True)
    run([*common, "--out_dir", split, "--max_steps", "5", "--resume_checkpoint", "latest"])
    a = read_jsonl(os.path.join(straight, "metrics_step.jsonl"))
    b = read_jsonl(os.path.join(split, "metrics_step.jsonl"))
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5]
    for ra, rb in zip(a, b):
        assert rb["total_loss"] == pytest.approx(ra["total_loss"], rel=1e-5)
    wa, wb = load_autoencoder(straight).state_dict(), load_autoencoder(split).state_dict()
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


def test_validating_more_often_leaves_training_alone(filaments, tmp_path):
    """Validation after every epoch or only after the last: the same losses and weights."""
    common = ["--data_dir", filaments, *TINY, "--max_steps", "5"]
    every, last = str(tmp_path / "every"), str(tmp_path / "last")
    run([*common, "--out_dir", every])
    AcceleratorState._reset_state(True)
    run([*common, "--out_dir", last, "--autoencoder.training.val_interval", "100"])
    validated = [[r["epoch"] for r in read_jsonl(os.path.join(d, "metrics_epoch.jsonl")) if "val_fg_dice" in r]
                 for d in (every, last)]
    assert validated == [[0, 1], [1]]
    a = read_jsonl(os.path.join(every, "metrics_step.jsonl"))
    b = read_jsonl(os.path.join(last, "metrics_step.jsonl"))
    assert [r["total_loss"] for r in a] == [r["total_loss"] for r in b]
    wa, wb = load_autoencoder(every).state_dict(), load_autoencoder(last).state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_2d_saves_pretrained_vae_with_measured_scaling_factor(tmp_path):
    from diffusers import AutoencoderKL

    data = tmp_path / "slices"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        img = np.zeros((16, 16), np.float32)
        img[4:12, 4 + i:6 + i] = rng.uniform(0.5, 1.0)
        np.save(data / f"{i:05d}.npy", img)
    out = str(tmp_path / "run2d")
    trainer = AutoencoderTrainer(resolve_config([
        "--data_dir", str(data), "--out_dir", out, "--max_steps", "2", *TINY, "--autoencoder.spatial_dims", "2",
        "--autoencoder.training.loss.reconstruction_loss_type", "weighted",
        "--autoencoder.training.denoising.enabled", "false"]))
    trainer.train()
    vae = AutoencoderKL.from_pretrained(os.path.join(out, "vae"))
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert vae.config.scaling_factor == pytest.approx(summary["scaling_factor"])
    assert vae.config.scaling_factor != pytest.approx(0.18215)
    # the latent SR codec's scaled latents of the training images have unit std
    images = torch.stack([trainer.train_set[i]["image"] for i in range(len(trainer.train_set))])
    with torch.no_grad():
        assert codec.encode(vae, images, "unit").std().item() == pytest.approx(1.0, rel=1e-4)
    events = EventAccumulator(os.path.join(out, "tensorboard")).Reload()
    assert "val/patch_reconstruction_error" in events.Tags()["images"]


def test_perceptual_loss_without_weights_is_refused(filaments, tmp_path, capsys):
    out = tmp_path / "never"
    argv = ["--data_dir", filaments, "--out_dir", str(out), *TINY, "--autoencoder.training.perceptual_weight",
            "0.001"]
    assert run_main(main, argv) == 2
    err = capsys.readouterr().err
    assert "perceptual_weight=0.001 needs pretrained medicalnet_resnet10_23datasets weights" in err
    assert "cannot be downloaded here" in err and "perceptual.weights" in err
    assert not out.exists()
    missing = [*argv, "--autoencoder.training.perceptual.weights", str(tmp_path / "nowhere")]
    with pytest.raises(InputError, match="perceptual.weights: .* does not exist"):
        run(missing)


@pytest.mark.parametrize("extra, message", [
    (["--autoencoder.training.los.weighted.threshold", "0.2"], "unknown argument.*valid flags: .*--autoencoder"),
    (["--autoencoder.spatial_dims", "4"], r"autoencoder.spatial_dims: expected one of \[2, 3\], got 4"),
    (["--autoencoder.training.loss.reconstruction_loss_type", "focal"], "reconstruction_loss_type: expected one of"),
    (["--autoencoder.training.loss.weighted.foreground_weight", "-2"], "foreground_weight: expected a value >= 0"),
    (["--resume_checkpoint", "no/such/checkpoint-9"], "resume_from_checkpoint: 'no/such/checkpoint-9' is not a"),
    (["--autoencoder.num_channels", "8,16"], r"autoencoder.num_channels: expected a list such as \[32, 64, 128\]"),
    (["--data.crop_size", "9"], r"data.crop_size: the training size \(9, 9, 9\) must be divisible by 2"),
    (["--autoencoder.training.disc_num_layers", "3"],  # 16^3 -> 1 voxel per channel: refused before any step
     r"data.crop_size: training size \(16, 16, 16\) at batch size 1 is too small for the 3-layer patch discriminator"),
])
def test_bad_flags_exit_2_with_one_line(filaments, tmp_path, capsys, extra, message):
    assert run_main(main, ["--data_dir", filaments, "--out_dir", str(tmp_path / "r"), *TINY, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    assert __import__("re").search(message, err)
    assert not (tmp_path / "r").exists()


def test_unknown_yaml_key_mixed_shapes_and_empty_threshold(filaments, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("autoencoder:\n  training:\n    n_epoch: 3\n")
    assert run_main(main, ["--config", str(cfg)]) == 2
    assert "unknown key 'autoencoder.training.n_epoch'; valid keys in autoencoder.training:" in capsys.readouterr().err

    mixed = tmp_path / "mixed"
    write_filament_set(str(mixed), num_volumes=1, shape=(16, 16, 16), seed=1)
    import nibabel as nib
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 8), np.float32), np.eye(4)), str(mixed / "images" / "z.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 8), np.uint8), np.eye(4)), str(mixed / "masks" / "z.nii.gz"))
    assert run_main(main, ["--data_dir", str(mixed), "--out_dir", str(tmp_path / "m"), *TINY]) == 2
    assert "data.crop_size: the images differ in shape" in capsys.readouterr().err

    out = str(tmp_path / "thr")
    run(["--data_dir", filaments, "--out_dir", out, "--max_steps", "1", *TINY,
         "--autoencoder.training.loss.combined.threshold", "5.0"])
    assert "warning: threshold 5.0: the first batch has no foreground voxel" in capsys.readouterr().err


HUBCONF = '''dependencies = ["torch"]
import os
import torch


def medicalnet_resnet10_23datasets(cache_dir=None):
    """A small 3D feature network whose weights come from a local file, as the real hub entry loads its own."""
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv3d(4, 8, 3, stride=2, padding=1))
    state = torch.load(os.path.join(cache_dir, "medicalnet_resnet_10_23dataset.pth"), weights_only=True)
    net.load_state_dict({k.replace("module.", ""): v for k, v in state["state_dict"].items()})
    return net
'''


@pytest.fixture
def local_hub(tmp_path):
    """A torch-hub folder as MONAI's PerceptualLoss(cache_dir=...) leaves it: the hub repo and a weights file."""
    folder = tmp_path / "hub"
    repo = folder / HUB_REPO_FOLDER
    repo.mkdir(parents=True)
    (repo / "hubconf.py").write_text(HUBCONF)
    torch.manual_seed(3)
    state = {f"module.{k}": v for k, v in torch.nn.Sequential(
        torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(4, 8, 3, stride=2, padding=1)
    ).state_dict().items()}
    torch.save({"state_dict": state}, folder / "medicalnet_resnet_10_23dataset.pth")
    return str(folder), state


def test_perceptual_loss_loads_local_weights_offline(local_hub):
    folder, state = local_hub
    hub_dir = torch.hub.get_dir()
    pcfg = {"network": "medicalnet_resnet10_23datasets", "weights": folder, "is_fake_3d": False,
            "fake_3d_ratio": 0.5}
    loss = build_perceptual_loss(3, 0.001, pcfg)
    assert torch.hub.get_dir() == hub_dir and "HF_HUB_OFFLINE" not in os.environ
    loaded = loss.perceptual_function.model.state_dict()
    assert all(torch.equal(loaded[k.replace("module.", "")], v) for k, v in state.items())
    assert not any(p.requires_grad for p in loss.parameters())
    x = torch.rand(1, 1, 8, 8, 8, requires_grad=True)
    y = torch.rand(1, 1, 8, 8, 8)
    assert loss(y, y).item() == pytest.approx(0.0, abs=1e-6)
    value = loss(x, y)
    value.backward()
    assert value.item() > 0 and x.grad.abs().sum() > 0


def test_training_with_local_perceptual_weights_logs_the_term(filaments, local_hub, tmp_path):
    out = str(tmp_path / "run")
    run(["--data_dir", filaments, "--out_dir", out, "--max_steps", "2", *TINY,
         "--autoencoder.training.perceptual_weight", "0.001", "--autoencoder.training.perceptual.weights",
         local_hub[0]])
    steps = read_jsonl(os.path.join(out, "metrics_step.jsonl"))
    assert all(r["perceptual_loss"] > 0 for r in steps)


@pytest.mark.parametrize("variant", ["l1", "weighted", "combined"])
def test_comparison_script_fast_dev_run(variant, filaments, tmp_path):
    """config/run_train_autoencoder_<variant>.sh end to end with FAST_DEV_RUN=true (tiny model via extra flags)."""
    out = tmp_path / variant
    env = {**os.environ, "PYTHON": sys.executable, "DATA_DIR": filaments, "OUT_DIR": str(out),
           "FAST_DEV_RUN": "true"}
    done = subprocess.run(["bash", f"config/run_train_autoencoder_{variant}.sh", *TINY,
                           "--autoencoder.training.fast_dev_run_batches", "2"],
                          cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    with open(out / "config.json") as f:
        config = json.load(f)
    assert config["autoencoder.training.loss.reconstruction_loss_type"] == variant
    assert config["autoencoder.training.fast_dev_run"] is True and config["autoencoder.training.perceptual_weight"] == 0
    steps = read_jsonl(str(out / "metrics_step.jsonl"))
    assert [r["step"] for r in steps] == list(range(1, 7))  # 3 epochs x 2 batches
    assert (out / "summary.json").is_file() and (out / "autoencoder").is_dir()
