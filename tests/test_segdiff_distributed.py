"""Segmentation diffusion on two ranks (mpiexec, DDP over gloo): plain joint training and PCGrad keep every
parameter identical across ranks, and the distributed projection is PCGrad of the rank-averaged task gradients."""

import json
import os
import subprocess
import sys

import torch

from plugins.common.run_log import read_jsonl

RUNS = {"joint": 2, "pcgrad": 3}  # run -> optimizer steps (as in tests/segdiff_dist_worker.py)
SIGMAS = ("loss_parameters.log_sigma_seg", "loss_parameters.log_sigma_cls")


def test_two_ranks_joint_and_pcgrad(tiny_cohort, tmp_path):
    mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    worker = os.path.join(os.path.dirname(__file__), "segdiff_dist_worker.py")
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(__file__)), "OMP_NUM_THREADS": "1"}
    env.pop("DIST_PORT", None)  # rank 0 picks a free port
    result = subprocess.run([mpiexec, "-n", "2", sys.executable, worker, str(tmp_path), str(tiny_cohort)],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]

    for run, steps in RUNS.items():
        rank0 = torch.load(tmp_path / f"{run}_rank0.pt", weights_only=True)
        rank1 = torch.load(tmp_path / f"{run}_rank1.pt", weights_only=True)
        assert rank0.keys() == rank1.keys() and set(SIGMAS) <= set(rank0)
        assert any(k.startswith("heads.cls.") for k in rank0)
        for key in rank0:
            assert torch.equal(rank0[key], rank1[key]), (run, key)
        assert all(float(rank0[k]) != 0.0 for k in SIGMAS), run  # the log-sigmas (initially 0) were trained
        saved = torch.load(tmp_path / run / f"model{steps:06d}.pt", weights_only=True)
        assert all(torch.equal(saved[k], rank0[k]) for k in rank0)
        log = (tmp_path / run / "log.txt").read_text()
        assert "synchronised by DDP over gloo" in log
        records = read_jsonl(str(tmp_path / run / "metrics_step.jsonl"))
        assert len(records) == steps and all(-1 <= r["grad_cos_seg_cls"] <= 1 for r in records)
        assert all(("pcgrad_conflicts" in r) == (run == "pcgrad") for r in records)

    for rank in (0, 1):
        check = json.loads((tmp_path / f"check_rank{rank}.json").read_text())
        # synthetic: no rank's own gradients conflict, their averages do; a None on one rank counts as zeros
        assert check["synthetic_means_equal"] and check["synthetic_equal"], check
        assert check["synthetic_conflicted"] and check["synthetic_naive_differs"], check
        # the model, one batch of one microbatch then one of two: each rank's p.grad after the loop's
        # forward_backward == sum over microbatches of pcgrad(mean g_seg, mean g_cls) of the gathered gradients
        assert check["microbatches"] == [1, 2], check
        assert check["local_differ"] == [True] * 3, check  # the ranks saw different slices
        assert check["model_equal"] == [True, True] and check["model_max_abs_diff"] == [0.0, 0.0], check
        assert check["grads_same_on_ranks"] == [True, True], check
        assert check["hook_counted_conflict"] == [True] * 3, check
