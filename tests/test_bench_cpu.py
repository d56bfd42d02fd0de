"""scripts/bench_cpu.py at its smallest settings: one JSON line per variant with the documented keys."""

import json

KEYS = {"figure", "family", "variant", "value", "value_is", "threads", "channels_last", "compile", "status", "error",
        "median_step_s", "steps_per_s", "first_step_s", "loss", "baseline_loss", "loss_rel_diff", "tolerance",
        "agree", "check_steps", "batch_size", "rounds", "steps", "torch", "device"}
SMALLEST = ["--rounds", "1", "--warmup", "0", "--steps", "1", "--check_steps", "1", "--gd_batch", "1",
            "--sr_batch", "1", "--side_by_side", "1"]
SIDE_BY_SIDE_KEYS = {"figure", "family", "variant", "value", "value_is", "processes", "threads_per_process",
                     "median_step_s", "steps_per_s_per_process", "rounds", "steps", "torch", "device"}


def _records(capsys):
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]


def test_every_family_and_variant_gets_one_line(run_script, capsys):
    assert run_script("bench_cpu", *SMALLEST, "--threads", "1,2", "--compile", "False") == 0
    records = _records(capsys)
    assert [(r["family"], r["variant"]) for r in records] == [
        (f, f"threads{t}_{fmt}_eager") for f, fmts in (("gd", ("default", "channels_last")),
                                                       ("sr_unet", ("default", "channels_last")),
                                                       ("ae3d", ("default",)))
        for fmt in fmts for t in (1, 2)]
    for r in records:
        assert set(r) == KEYS and r["figure"] == "train_step" and r["status"] == "ok"
        assert r["value"] > 0 and r["steps_per_s"] > 0 and r["agree"] is True  # same weights, seed, batch
    assert all(r["loss_rel_diff"] == 0.0 for r in records if r["variant"].startswith("threads1_default"))


def test_a_compilation_past_its_timeout_is_reported_unsupported(run_script, capsys):
    assert run_script("bench_cpu", *SMALLEST, "--families", "ae3d", "--threads", "1", "--compile_timeout", "0.01") == 0
    eager, compiled = _records(capsys)
    assert eager["status"] == "ok" and set(compiled) == KEYS
    assert compiled["status"] == "unsupported" and "--compile_timeout" in compiled["error"]
    assert compiled["value"] is None and compiled["agree"] is False


def test_side_by_side_times_both_formats_in_processes_at_once(run_script, capsys):
    # two threads first: the side-by-side processes start fresh (a fork after OpenMP threads ran hung)
    assert run_script("bench_cpu", *SMALLEST, "--families", "gd,ae3d", "--threads", "2", "--compile", "False",
                      "--side_by_side", "2", "--side_by_side_steps", "1", "--rounds", "2") == 0
    side = [r for r in _records(capsys) if r["figure"] == "train_step_side_by_side"]
    assert [(r["family"], r["variant"]) for r in side] == [("gd", "default"), ("gd", "channels_last")]  # 2D only
    for r in side:
        assert set(r) == SIDE_BY_SIDE_KEYS and r["processes"] == 2 and r["rounds"] == 2
        assert r["value"] > 0 and r["median_step_s"] > 0
    assert side[0]["value"] == 1.0
    # without channels_last only the default format is timed side by side
    assert run_script("bench_cpu", *SMALLEST, "--families", "gd", "--threads", "1", "--compile", "False",
                      "--channels_last", "False", "--side_by_side", "2", "--side_by_side_steps", "1",
                      "--rounds", "1") == 0
    assert [r["variant"] for r in _records(capsys) if r["figure"] == "train_step_side_by_side"] == ["default"]


def test_bad_flags_get_one_line(run_script, capsys):
    assert run_script("bench_cpu", "--families", "gd,vit") == 2
    assert "--families" in capsys.readouterr().err
    assert run_script("bench_cpu", "--threads", "0") == 2
    assert "--threads" in capsys.readouterr().err
    assert run_script("bench_cpu", "--side_by_side", "0") == 2
    assert "--side_by_side" in capsys.readouterr().err
