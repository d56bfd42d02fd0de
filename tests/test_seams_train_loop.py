"""SeamTrainLoop: bit-for-bit equivalence with upstream, resume, epochs, non-finite guard, safe checkpoints."""

import csv
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch
from guided_diffusion import logger
from guided_diffusion.script_util import create_gaussian_diffusion
from guided_diffusion.train_util import TrainLoop
from guided_diffusion.unet import UNetModel

from patches.checkpoints import CheckpointError, UnsafeCheckpointError, load_checkpoint
from patches.guided_diffusion import LossTerm, NonFiniteLossError, create_seam_diffusion, create_seam_model
from patches.ema import ema_decay, ema_summary
from patches.guided_diffusion.train_loop import latest_checkpoint
from plugins.common.run_log import read_jsonl
from tests.gd_tiny import TINY_DIFFUSION, TINY_MODEL, batches, close_logger, endless, seam_loop, seed_all

STEPS = 4


def _losses_from_csv(run_dir, column="loss"):
    with open(os.path.join(run_dir, "progress.csv")) as f:
        return [float(row[column]) for row in csv.DictReader(f)]


def _upstream_run(run_dir):
    logger.configure(dir=str(run_dir), format_strs=["csv"])
    seed_all(0)
    model = UNetModel(image_size=32, in_channels=2, model_channels=32, out_channels=2, num_res_blocks=1,
                      attention_resolutions=(4,), channel_mult=(1, 2, 2), num_heads=1,
                      use_scale_shift_norm=True)
    diffusion = create_gaussian_diffusion(steps=TINY_DIFFUSION["diffusion_steps"])
    loop = TrainLoop(model=model, diffusion=diffusion, data=endless(batches(3)), batch_size=2, microbatch=-1,
                     lr=1e-3, ema_rate="0.9", log_interval=1, save_interval=1000, resume_checkpoint="",
                     lr_anneal_steps=STEPS)
    loop.run_loop()
    close_logger()
    return loop


def test_no_plugin_equals_upstream_bit_for_bit(gd_dist, tmp_path):
    upstream = _upstream_run(tmp_path / "upstream")
    seam = seam_loop(tmp_path / "seam", endless(batches(3)), max_steps=0, lr_anneal_steps=STEPS)
    seam.run_loop()
    close_logger()
    assert _losses_from_csv(tmp_path / "seam") == _losses_from_csv(tmp_path / "upstream")
    assert len(_losses_from_csv(tmp_path / "seam")) == STEPS
    for norm in ("grad_norm", "param_norm"):  # fused reductions: the same norms up to float summation order
        assert _losses_from_csv(tmp_path / "seam", norm) == pytest.approx(
            _losses_from_csv(tmp_path / "upstream", norm), rel=1e-5)
    for (name, a), b in zip(upstream.model.state_dict().items(), seam.model.state_dict().values()):
        assert torch.equal(a, b), name
    for a, b in zip(upstream.ema_params[0], seam.ema_params[0]):
        assert torch.equal(a, b)


def test_ema_warmup_starts_at_the_weights_and_follows_the_schedule(gd_dist, tmp_path):
    loop = seam_loop(tmp_path / "w", endless(batches(3)), max_steps=1, ema_rate="0.9999", ema_warmup=True)
    loop.run_loop()
    close_logger()
    assert all(torch.equal(e, p) for e, p in zip(loop.ema_params[0], loop.mp_trainer.master_params))
    assert ema_decay(0.9999, 2, True) == pytest.approx(1 - 2 ** (-2 / 3))
    assert ema_decay(0.9999, 1000, True) == pytest.approx(0.99)
    assert ema_decay(0.9999, 10**9, True) == 0.9999 and ema_decay(0.9999, 1, False) == 0.9999


def test_ema_summary_matches_closed_form_of_constant_rate():
    r, n = 0.9999, 1000
    got = ema_summary(r, n, warmup=False)
    assert got["ema_init_weight"] == pytest.approx(r ** n)  # 0.905: upstream's EMA after 1,000 steps
    assert got["ema_mean_age_steps"] == pytest.approx(r * (1 - r ** n) / (1 - r))
    warm = ema_summary(r, n, warmup=True)
    assert warm["ema_init_weight"] == 0.0 and warm["ema_mean_age_steps"] < 0.2 * n


def _trained_state(loop):
    return {k: v.clone() for k, v in loop.model.state_dict().items()}


def test_resume_after_stop_matches_straight_run_and_epochs(gd_dist, tmp_path):
    epochs_straight, epochs_resumed = [], []
    straight = seam_loop(tmp_path / "a", batches(3), max_steps=5, save_interval=2, ema_warmup=True,
                         epoch_callbacks=[lambda loop, e: epochs_straight.append((e, loop.step + loop.resume_step))])
    straight.run_loop()
    close_logger()
    assert sorted(os.listdir(tmp_path / "a")).count("model000005.pt") == 1
    assert epochs_straight == [(0, 3)]

    first = seam_loop(tmp_path / "b", batches(3), max_steps=2, save_interval=2, ema_warmup=True)
    first.run_loop()
    close_logger()
    assert latest_checkpoint(str(tmp_path / "b")).endswith("model000002.pt")
    resumed = seam_loop(tmp_path / "b", batches(3), max_steps=5, save_interval=2, seed=123,
                        resume_checkpoint="latest", ema_warmup=True,
                        epoch_callbacks=[lambda loop, e: epochs_resumed.append((e, loop.step + loop.resume_step))])
    assert resumed.resume_step == 2
    resumed.run_loop()
    close_logger()
    assert epochs_resumed == epochs_straight
    a, b = _trained_state(straight), _trained_state(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(x, y) for x, y in zip(straight.ema_params[0], resumed.ema_params[0]))
    steps = [r["step"] for r in read_jsonl(str(tmp_path / "b" / "metrics_step.jsonl"))]
    assert steps == [0, 1, 2, 3, 4]


def test_epoch_callbacks_drawing_random_numbers_leave_training_alone(gd_dist, tmp_path):
    """A callback (e.g. a validation's loader and sampler) drawing from python, numpy and torch's
    generators: the same weights as without it."""
    def noisy(loop, epoch):
        random.random(), np.random.rand(3), torch.randn(5), torch.randint(0, 9, (2,))

    quiet = seam_loop(tmp_path / "quiet", batches(3), max_steps=7)
    quiet.run_loop()
    close_logger()
    drawn = seam_loop(tmp_path / "drawn", batches(3), max_steps=7, epoch_callbacks=[noisy])
    drawn.run_loop()
    close_logger()
    a, b = _trained_state(quiet), _trained_state(drawn)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_from_directory_and_plugin_parameters_in_checkpoint(gd_dist, tmp_path):
    model = create_seam_model(**TINY_MODEL)
    sigma = model.add_loss_parameter("log_sigma", 0.5)
    diffusion = create_seam_diffusion(**TINY_DIFFUSION)
    diffusion.add_loss_term(LossTerm("l_sigma", lambda ctx: ctx.model.loss_parameters["log_sigma"].expand(ctx.x_start.shape[0]), 1.0))
    loop = seam_loop(tmp_path / "run", batches(2), max_steps=2, model=model, diffusion=diffusion)
    loop.run_loop()
    close_logger()
    saved = load_checkpoint(str(tmp_path / "run" / "model000002.pt"))
    assert torch.equal(saved["loss_parameters.log_sigma"], sigma.detach())
    assert saved["loss_parameters.log_sigma"].item() < 0.5  # the term pulled it down

    fresh = create_seam_model(**TINY_MODEL)
    fresh.add_loss_parameter("log_sigma", 0.0)
    again = seam_loop(tmp_path / "other", batches(2), max_steps=2, model=fresh,
                      resume_checkpoint=str(tmp_path / "run"))
    close_logger()
    assert again.resume_step == 2
    assert torch.equal(fresh.loss_parameters["log_sigma"].detach(), sigma.detach())


def test_non_finite_steps_are_skipped_then_stop(gd_dist, tmp_path):
    calls = {"n": 0}

    def sometimes_nan(ctx):
        calls["n"] += 1
        value = torch.zeros(ctx.x_start.shape[0])
        return value + float("nan") if calls["n"] == 2 else value

    diffusion = create_seam_diffusion(**TINY_DIFFUSION)
    diffusion.add_loss_term(LossTerm("l_nan", sometimes_nan))
    loop = seam_loop(tmp_path / "skip", batches(4), max_steps=4, diffusion=diffusion)
    loop.run_loop()
    close_logger()
    assert loop.skipped_steps == 1
    assert all(torch.isfinite(p).all() for p in loop.model.parameters())

    always = create_seam_diffusion(**TINY_DIFFUSION)
    always.add_loss_term(LossTerm("l_nan", lambda ctx: torch.full((ctx.x_start.shape[0],), float("inf"))))
    stuck = seam_loop(tmp_path / "stop", batches(4), max_steps=10, diffusion=always, max_consecutive_skips=3)
    before = _trained_state(stuck)
    with pytest.raises(NonFiniteLossError, match="3 consecutive steps"):
        stuck.run_loop()
    close_logger()
    after = _trained_state(stuck)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_grad_clip_and_bf16_run(gd_dist, tmp_path):
    loop = seam_loop(tmp_path / "clip", batches(2), max_steps=2, grad_clip=1e-3, use_bf16=True)
    loop.run_loop()
    close_logger()
    records = read_jsonl(str(tmp_path / "clip" / "metrics_step.jsonl"))
    assert len(records) == 2 and all(r["loss"] is not None and r["step_time_s"] > 0 for r in records)
    assert all(r["grad_norm"] > 1e-3 for r in records)  # logged before clipping


class _Payload:
    def __reduce__(self):
        return (print, ("code ran",))


def test_checkpoint_with_pickled_code_is_refused(gd_dist, tmp_path):
    run = tmp_path / "evil"
    run.mkdir()
    torch.save({"weights": torch.zeros(1), "payload": _Payload()}, run / "model000001.pt")
    with pytest.raises(UnsafeCheckpointError, match="refused"):
        load_checkpoint(str(run / "model000001.pt"))
    with pytest.raises(UnsafeCheckpointError):
        seam_loop(tmp_path / "victim", batches(1), max_steps=1, resume_checkpoint=str(run))
    close_logger()


def test_bad_resume_specs_and_architecture_mismatch(gd_dist, tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        seam_loop(tmp_path / "x", batches(1), max_steps=1, resume_checkpoint=str(tmp_path / "nope.pt"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no modelNNNNNN.pt"):
        seam_loop(tmp_path / "x", batches(1), max_steps=1, resume_checkpoint=str(tmp_path / "empty"))
    torch.save({"not.a.key": torch.zeros(1)}, tmp_path / "empty" / "model000003.pt")
    with pytest.raises(CheckpointError, match="another architecture.*missing"):
        seam_loop(tmp_path / "x", batches(1), max_steps=1, resume_checkpoint=str(tmp_path / "empty"))
    close_logger()


def test_two_ranks_under_mpiexec_keep_identical_parameters(tmp_path):
    mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    worker = os.path.join(os.path.dirname(__file__), "dist_worker.py")
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(__file__)), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([mpiexec, "-n", "2", sys.executable, worker, str(tmp_path)], env=env,
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert rank0.keys() == rank1.keys() and "loss_parameters.log_sigma" in rank0
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    initial = torch.load(tmp_path / "initial0.pt", weights_only=True)
    assert not torch.equal(initial["loss_parameters.log_sigma"], rank0["loss_parameters.log_sigma"])


def test_frozen_parameters_stay_out_of_optimizer_and_init_from_checkpoint(gd_dist, tmp_path):
    first = seam_loop(tmp_path / "stage1", batches(2), max_steps=2)
    first.run_loop()
    close_logger()
    model = create_seam_model(**TINY_MODEL)
    for p in model.input_blocks.parameters():
        p.requires_grad_(False)
    stage2 = seam_loop(tmp_path / "stage2", batches(2), max_steps=2, model=model,
                       resume_checkpoint=str(tmp_path / "stage1"), init_from_checkpoint=True)
    assert stage2.resume_step == 0
    held = {id(p) for group in stage2.opt.param_groups for p in group["params"]}
    assert not any(id(p) in held for p in model.input_blocks.parameters())
    assert len(held) == sum(1 for p in model.parameters() if p.requires_grad)
    loaded = load_checkpoint(str(tmp_path / "stage1" / "model000002.pt"))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.items())
    stage2.run_loop()
    close_logger()
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items() if k.startswith("input_blocks"))
    assert "model000002.pt" in os.listdir(tmp_path / "stage2")
