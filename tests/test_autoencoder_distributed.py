"""Two CPU processes (torchrun, gloo) train the autoencoder; validation scores every rank's share of the volumes.

Run as a script by the test: ``ACCELERATE_USE_CPU=1 torchrun --standalone --nproc_per_node 2
tests/test_autoencoder_distributed.py DATA OUT``.
"""

import os
import subprocess
import sys

import pytest
import torch

TINY = ["--autoencoder.num_channels", "[4, 8]", "--autoencoder.attention_levels", "[false, false]",
        "--autoencoder.norm_num_groups", "4", "--autoencoder.latent_channels", "2",
        "--autoencoder.training.perceptual_weight", "0", "--autoencoder.training.adv_weight", "0",
        "--autoencoder.training.use_gradient_checkpointing", "false", "--autoencoder.training.denoising.enabled",
        "false", "--data.val_fraction", "0.5", "--max_steps", "2"]

if __name__ == "__main__":
    import torch.distributed as dist

    from scripts.train_autoencoder import main

    torch.set_num_threads(1)
    data, out = sys.argv[1:3]
    main(["--data_dir", data, "--out_dir", out, *TINY])
    if dist.is_initialized():
        dist.destroy_process_group()
    sys.exit(0)

from plugins.autoencoder.data import build_datasets  # noqa: E402
from plugins.autoencoder.metrics import psnr  # noqa: E402
from plugins.autoencoder.models import load_autoencoder  # noqa: E402
from plugins.common.run_log import read_case_table  # noqa: E402
from plugins.data.filaments import write_filament_set  # noqa: E402


def test_two_ranks_validate_every_volume_once(tmp_path):
    data, out = str(tmp_path / "data"), str(tmp_path / "run")
    write_filament_set(data, num_volumes=4, shape=(16, 16, 16), seed=0)
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", os.path.abspath(__file__), data, out],
                          capture_output=True, text=True, timeout=300, env=env, cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["case"]: r for r in read_case_table(os.path.join(out, "eval", "cases.csv"))}
    assert sorted(rows) == ["filament_002", "filament_003"]  # one per rank, both in the table
    model = load_autoencoder(out).eval()
    _, val = build_datasets({"data_dir": data, "mask_dir": "", "crop_size": None, "val_fraction": 0.5,
                             "normalize": "minmax"}, 3, 1)
    for i in range(len(val)):
        x = val[i]["image"][None]
        with torch.no_grad():
            recon = model.decode(model.encode(x)[0])
        assert rows[val.case_id(i)]["psnr"] == pytest.approx(psnr(recon, x), rel=1e-4)
