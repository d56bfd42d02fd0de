"""The reproduction's orchestration on a tiny subset (the BEA comparison, one seed, tiny settings, through
the real scripts as subprocesses): reports, index, verdicts, resuming from finished parts; claim
verdicts by hand; refusals."""

import json
import os

import pytest

from plugins.common.errors import InputError, run_main
from plugins.report.runs import Run
from plugins.reproduce import COMPARISONS, Context, check_scale, parse_extra_flags, reproduce, scale_note
from plugins.reproduce.claims import (INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED, UNTESTABLE, Check, Gate,
                                      check_line, claim_verdict, decide, evaluate_check, evaluate_gate, gate_line)
from plugins.reproduce.jobs import Job, check_order, dependents, folder_lock, run_jobs

TINY = {
    "bea_train": ["--image_size", "32", "--num_channels", "32", "--num_res_blocks", "1", "--attention_resolutions",
                  "8", "--num_heads", "1", "--batch_size", "4", "--diffusion_steps", "30", "--log_interval", "1",
                  "--val_fraction", "0.4", "--max_steps", "2", "--save_interval", "2", "--channels_last", "True"],
    "bea_fpdm": ["--image_size", "32", "--t_max", "20", "--t_stride", "10", "--batch_size", "16",
                 "--slice_step", "4", "--num_eval_cases", "1"],
}


@pytest.fixture(scope="module")
def reproduction(tmp_path_factory, tiny_cohort):
    root = tmp_path_factory.mktemp("reproduce") / "quick"
    ctx = Context(root=str(root), data_dir=os.path.dirname(str(tiny_cohort)), scale="quick", seeds=[0],
                  overrides=TINY)
    index = reproduce(ctx, ["bea"], threads=1, workers=2)
    return ctx, root, index


def test_reports_index_and_verdicts(reproduction):
    ctx, root, index = reproduction
    assert index == str(root / "index.html")
    verdicts = json.loads((root / "verdicts.json").read_text())
    entry = verdicts["comparisons"][0]
    assert verdicts["scale"] == "quick" and entry["key"] == "bea"
    assert entry["verdict"] == UNTESTABLE  # two training steps: the baseline cannot pass its gates
    gates = entry["gates"]  # 5 x prevalence, 0.3, image accuracy 0.75, image accuracy over the all-healthy call's
    assert [g["passed"] for g in gates[:3]] == [False, False, False] and len(gates) == 4
    assert gates[3]["threshold"] == pytest.approx(json.loads(
        (root / "runs/bea/bea_mse_s0/fpdm/metrics.json").read_text())["reference_all_healthy_accuracy"])
    assert [r["label"] for r in entry["reported"]] == ["image recall (tumour slices called unhealthy)",
                                                       "FLAIR thresholding's AUPRC",
                                                       "FLAIR thresholding's image accuracy"]
    assert all(c["verdict"] == INCONCLUSIVE for c in entry["checks"])  # one seed, pooled AUPRC: no interval
    html = (root / "index.html").read_text()
    assert "Scale: quick scale" in html and "bea/index.html" in html and "untestable at this scale" in html
    assert "gate bea_mse fpdm/mixed.auprc" in html and "reported: FLAIR thresholding&#x27;s AUPRC" in html
    summary = (root / "index.md").read_text().split("## Summary")[1]  # one table row per check
    assert "| bea | fpdm/mixed.auprc " in summary and "FAILS" in summary and "| untestable at this scale |" in summary
    assert summary.count("fpdm/mixed.auprc: bea_dual higher than bea_mse") == 1
    report = json.loads((root / "bea" / "summary.json").read_text())
    assert list(report["groups"]) == ["bea_mse", "plain", "bea_dual"] and "fpdm/mixed.auprc" in report["metrics"]
    assert set(report["config_diff"]) == {"use_bea", "boundary_loss_weight"}
    assert "quick scale" in (root / "bea" / "report.md").read_text()


def test_resumes_from_finished_parts(reproduction):
    ctx, root, _ = reproduction
    jobs, _ = COMPARISONS["bea"].plan(ctx)
    timings = {}
    run_jobs(jobs, str(root), "bea", threads=1, timings=timings)
    assert timings == {}  # everything finished before
    os.remove(root / "done" / "bea__bea_dual_s0__fpdm")
    run_jobs(jobs, str(root), "bea", threads=1, timings=timings)
    assert list(timings) == ["bea/bea_dual_s0/fpdm"]
    wall, cpu = map(float, (root / "done" / "bea__bea_dual_s0__fpdm").read_text().split())
    assert wall > 0 and cpu > 0  # the step's own process tree, whatever else the machine runs


def test_steps_run_side_by_side_after_what_they_read(reproduction):
    """Two workers: each FPDM evaluation starts after its own training ended; the trainings overlap."""
    ctx, root, _ = reproduction

    def span(slug):
        marker = root / "done" / slug
        return marker.stat().st_mtime - float(marker.read_text().split()[0]), marker.stat().st_mtime

    spans = {v: (span(f"bea__{v}_s0__train"), span(f"bea__{v}_s0__fpdm")) for v in ("bea_mse", "plain", "bea_dual")}
    for (_, train_end), (fpdm_start, _) in spans.values():
        assert fpdm_start >= train_end - 0.2
    (mse_start, mse_end), (plain_start, _) = spans["bea_mse"][0], spans["plain"][0]
    assert plain_start < mse_end  # the second training did not wait for the first


def test_jobs_others_wait_for_start_first(tmp_path):
    """Among ready jobs, a training (one scoring waits for it) starts before the scoring of an earlier training,
    so the last training does not wait for the scorings; list order among equals."""
    def job(name, *after):
        return Job(name, "make_demo_data", ["--help"], after=after)

    jobs = [job("data"), job("a/train", "data"), job("a/score", "a/train"), job("b/train", "data"),
            job("b/score", "b/train"), job("c/train", "data")]
    assert dependents(jobs) == {"data": 5, "a/train": 1, "a/score": 0, "b/train": 1, "b/score": 0, "c/train": 0}
    timings = {}
    run_jobs(jobs, str(tmp_path), "order", threads=1, workers=1, timings=timings)
    assert list(timings) == ["data", "a/train", "b/train", "a/score", "b/score", "c/train"]


def test_cpu_plans_wait_for_what_they_read(tmp_path):
    """Every step starts after the steps whose output it reads; the cpu scale's seeds per comparison; the
    60-subject cohort is built before any BEA or segmentation training, once when both run; BEA's plain arm (in
    no check) runs one seed; BEA and segmentation train channels_last weights; only stage 2
    overrides --lr; the backbones train side by side and are timed together."""
    ctx = Context(root=str(tmp_path), data_dir="data/demo", scale="cpu", seeds=[0, 1, 2])
    plans = {key: comp.plan(ctx) for key, comp in COMPARISONS.items()}
    for jobs, _ in plans.values():
        check_order(jobs)
        for job in jobs:
            if job.name.endswith(("/fpdm", "/sample", "/stage2", "/stage3")):
                assert job.after == (job.name.rsplit("/", 1)[0] + ("/train" if "stage" not in job.name else
                                                                   f"/stage{int(job.name[-1]) - 1}"),)
    assert {key: len(runs[next(iter(runs))]) for key, (_, runs) in plans.items()} == {
        "bea": 3, "autoencoder": 2, "segmentation": 3, "sr": 2, "backbones": 1}
    assert {v: len(runs) for v, runs in plans["bea"][1].items()} == {"bea_mse": 3, "plain": 1, "bea_dual": 3}
    gd_steps = [j for key in ("bea", "segmentation") for j in plans[key][0] if j.script != "make_demo_data"]
    gd_trains = [j for j in gd_steps if "--channels_last" in j.args]
    assert len(gd_trains) == 7 + 9 + 6 and all(j.args[j.args.index("--channels_last") + 1] == "True" for j in gd_trains)
    assert len(gd_steps) == len(gd_trains) + 7  # and the FPDM scorings
    cohort_dir = os.path.join(str(tmp_path), "data", "cohort_60", "brats")
    for key, first_steps in (("bea", ("/train",)), ("segmentation", ("/train", "/stage1"))):
        jobs = plans[key][0]
        cohort = jobs[0]
        assert cohort.name == "data/cohort_60" and cohort.script == "make_demo_data"
        assert cohort.args[cohort.args.index("--num_subjects") + 1] == 60
        trains = [j for j in jobs if j.name.endswith(first_steps)]
        assert len(trains) == {"bea": 7, "segmentation": 9}[key]
        assert all(j.after == (cohort.name,) and cohort_dir in j.args for j in trains)
    assert all(cohort_dir in j.args for j in plans["bea"][0] if j.name.endswith("/fpdm"))
    lr = {job.name: job.args[max(i for i, a in enumerate(job.args) if a == "--lr") + 1]
          for job in plans["segmentation"][0][1:]}
    assert lr == {f"segmentation/{name}_s{seed}/{step}": rate for seed in range(3) for name, step, rate in (
        ("seg_only", "train", "1e-3"), ("joint", "train", "1e-3"), ("staged", "stage1", "1e-3"),
        ("staged", "stage2", "1e-4"), ("staged", "stage3", "1e-3"))}
    vae, *trains, bench = plans["backbones"][0]
    assert [j.name for j in trains] == [f"backbones/s0/{n}/train" for n in ("unet", "dit", "hybrid")]
    assert all(j.after == (vae.name,) and j.args[-4:-2] == ["--backbones", j.name.split("/")[2]] for j in trains)
    assert bench.after == tuple(j.name for j in trains) and "--train_only" not in bench.args


def test_one_folder_serves_one_reproduction(reproduction):
    ctx, root, _ = reproduction
    before = (root / "verdicts.json").read_text()
    with folder_lock(str(root)):
        with pytest.raises(InputError, match=r"another reproduction \(pid \d+\) is running in this folder"):
            reproduce(ctx, ["bea"])
    assert (root / "verdicts.json").read_text() == before


def test_one_comparison_at_a_time_keeps_the_others_verdicts(reproduction):
    """``--only bea`` again: the folder's earlier verdict of another comparison stays in verdicts.json and the index."""
    ctx, root, _ = reproduction
    path = root / "verdicts.json"
    saved = json.loads(path.read_text())
    other = {**saved["comparisons"][0], "key": "sr", "title": "Seed 003 (an earlier --only sr)"}
    path.write_text(json.dumps({**saved, "comparisons": [other, *saved["comparisons"]]}))
    reproduce(ctx, ["bea"])
    assert [e["key"] for e in json.loads(path.read_text())["comparisons"]] == ["bea", "sr"]
    assert "Seed 003 (an earlier --only sr)" in (root / "index.html").read_text()
    path.write_text(json.dumps(saved))


def test_a_different_scale_is_refused_and_a_failed_step_names_its_log(reproduction, capsys):
    ctx, root, _ = reproduction
    with pytest.raises(InputError, match="holds a 'quick' reproduction"):
        check_scale(Context(root=str(root), data_dir=ctx.data_dir, scale="default"))
    broken = Context(root=str(root / "broken"), data_dir=str(root / "no_data"), scale="quick", seeds=[0],
                     overrides=TINY)
    with pytest.raises(InputError, match=r"step bea/bea_mse_s0/train failed \(exit 2\); its output: .*\.log"):
        reproduce(broken, ["bea"])
    assert not os.path.exists(root / "broken" / "done" / "bea__bea_mse_s0__train")
    assert not os.path.exists(root / "broken" / "verdicts.json")  # nothing finished: no verdicts, no index


def test_extra_flags_follow_the_scale_and_bind_the_folder(reproduction, tmp_path):
    """--extra_flags land after the scale's flags and before each arm's own, so they override the scale and the arms
    stay what they are; they are on the scale line; a folder refuses steps under other extra flags or data."""
    extra = parse_extra_flags(["bea_train=--max_steps 7 --lr 1e-3", "bea_train=--log_interval 3",
                               "bea_fpdm=--t_stride 5"], "cpu")
    assert extra == {"bea_train": ["--max_steps", "7", "--lr", "1e-3", "--log_interval", "3"],
                     "bea_fpdm": ["--t_stride", "5"]}
    ctx = Context(root=str(tmp_path), data_dir="data/demo", scale="cpu", seeds=[0], extra_flags=extra)
    jobs, _ = COMPARISONS["bea"].plan(ctx)

    def last(args, flag):
        return args[max(i for i, a in enumerate(args) if a == flag) + 1]
    trains = {j.name: j.args for j in jobs if j.name.endswith("/train")}
    assert [last(a, "--max_steps") for a in trains.values()] == ["7"] * 3
    assert {last(a, "--lr") for a in trains.values()} == {"1e-3"}
    assert last(trains["bea/bea_mse_s0/train"], "--boundary_loss_weight") == "0"  # the arm's own flag still wins
    assert all(last(j.args, "--t_stride") == "5" for j in jobs if j.name.endswith("/fpdm"))
    assert "Extra flags: bea_train: --max_steps 7 --lr 1e-3 --log_interval 3; bea_fpdm: --t_stride 5." in scale_note(ctx)
    quick, root, _ = reproduction
    with pytest.raises(InputError, match=r"ran with extra flags \(none\), not bea_train: --max_steps 7"):
        check_scale(Context(root=str(root), data_dir=quick.data_dir, scale="quick",
                            extra_flags={"bea_train": ["--max_steps", "7"]}))
    check_scale(ctx)
    check_scale(ctx)  # the same extra flags resume
    with pytest.raises(InputError, match=r"ran with extra flags bea_train: --max_steps 7 .*, not \(none\)"):
        check_scale(Context(root=str(tmp_path), data_dir="data/demo", scale="cpu"))
    with pytest.raises(InputError, match=r"steps read --data_dir data/demo, not other/data; --out_dir another folder"):
        check_scale(Context(root=str(tmp_path), data_dir="other/data", scale="cpu", extra_flags=extra))
    legacy = tmp_path / "legacy"  # a folder from before the data folder and extra flags were recorded
    legacy.mkdir()
    (legacy / "scale.json").write_text(json.dumps({"scale": "cpu"}))
    check_scale(Context(root=str(legacy), data_dir="data/demo", scale="cpu"))
    assert json.loads((legacy / "scale.json").read_text()) == {"scale": "cpu", "data_dir": "data/demo", "extra_flags": {}}


NOT_A_LIST = ("; expected SETTING=FLAGS with SETTING one of the cpu scale's flag lists (ae_train, backbones, bea_fpdm, "
              "bea_train, seg_train, sr_sample, sr_train, vae_train)")


@pytest.mark.parametrize("value, why", [
    *((v, NOT_A_LIST) for v in ("bea_train", "nope=--lr 1", "bea_train=  ", "seg_stage_steps=1 2 3",
                                "seg_sample=--num_ensemble 2")),
    ("bea_train=--lr '1e-3", "; its FLAGS do not split as a shell would")])
def test_extra_flags_refuse_what_is_not_a_flag_list(value, why, load_script, capsys, tmp_path):
    out = tmp_path / "out"
    assert run_main(load_script("reproduce").main, ["--scale", "cpu", "--out_dir", str(out), "--extra_flags", value]) == 2
    assert f"--extra_flags: got {value!r}{why}" in capsys.readouterr().err
    assert not out.exists()


def test_cli_refuses_another_data_folder_before_building_it(reproduction, load_script, capsys, tmp_path):
    _, root, _ = reproduction
    other = tmp_path / "other_data"
    assert run_main(load_script("reproduce").main, ["--scale", "quick", "--out_dir", str(root), "--only", "bea",
                                                    "--data_dir", str(other)]) == 2
    assert "this folder's steps read --data_dir" in capsys.readouterr().err
    assert not other.exists()


def test_cli_refuses_unknown_comparisons_and_negative_counts(load_script, capsys):
    assert run_main(load_script("reproduce").main, ["--scale", "quick", "--only", "bea,nope"]) == 2
    assert "--only: got 'bea,nope'; expected a comma-separated subset of bea, autoencoder" in capsys.readouterr().err
    assert run_main(load_script("reproduce").main, ["--scale", "quick", "--jobs", "-1"]) == 2
    assert "--seeds, --threads and --jobs: expected integers >= 0" in capsys.readouterr().err


@pytest.mark.parametrize("interval, margin, min_effect, verdict", [
    ((0.1, 0.3), 0, 0, SUPPORTED),
    ((-0.1, 0.3), 0, 0, INCONCLUSIVE),
    ((-0.3, -0.1), 0, 0, NOT_SUPPORTED),
    ((0.001, 0.002), 0, 0.005, NOT_SUPPORTED),  # real but below the smallest effect that matters
    ((0.003, 0.008), 0, 0.005, INCONCLUSIVE),
    ((-0.01, 0.2), 0.02, 0, SUPPORTED),  # not worse by more than the margin
    ((-0.5, -0.03), 0.02, 0, NOT_SUPPORTED),
    ((-0.05, 0.01), 0.02, 0, INCONCLUSIVE),
])
def test_decision_rule(interval, margin, min_effect, verdict):
    assert decide(interval, margin, min_effect) == verdict


def _run(seed, cases=None, **final):
    return Run(path=f"/r{seed}", config={"seed": seed}, final=final, cases=cases or {})


def test_checks_by_hand():
    groups = {"base": [_run(0, auc=0.50, dice=0.80), _run(1, auc=0.52, dice=0.70), _run(2, auc=0.54, dice=0.75)],
              "new": [_run(0, auc=0.60, dice=0.79), _run(1, auc=0.70, dice=0.71), _run(2, auc=0.64, dice=0.75)]}
    raised = evaluate_check(Check("auc", "new", "base"), groups)
    # paired differences 0.10, 0.18, 0.10: of the 27 equally likely resamples the smallest mean is 0.10 and
    # the largest 0.18, each 1/27 > 2.5% likely, so they bound the interval; mean difference 0.38 / 3
    assert raised["ci"] == pytest.approx([0.10, 0.18]) and raised["diff"] == pytest.approx(0.38 / 3)
    assert raised["verdict"] == SUPPORTED and raised["covers"] == "seeds"
    kept = evaluate_check(Check("dice", "new", "base", margin=0.02), groups)
    assert kept["ci"] == pytest.approx([-0.01, 0.01]) and kept["verdict"] == SUPPORTED
    chance = evaluate_check(Check("auc", "new", None, reference=0.5, min_effect=0.05), groups)
    assert chance["ci"] == pytest.approx([0.10, 0.20]) and chance["verdict"] == SUPPORTED
    lower = evaluate_check(Check("auc", "new", "base", direction="lower"), groups)
    assert lower["verdict"] == NOT_SUPPORTED
    missing = evaluate_check(Check("psnr", "new", "base"), groups)
    assert missing["verdict"] == INCONCLUSIVE and missing["note"] == "missing in base"
    assert claim_verdict([raised, kept]) == SUPPORTED
    assert claim_verdict([raised, missing]) == INCONCLUSIVE and claim_verdict([raised, lower]) == NOT_SUPPORTED
    two = {k: runs[:2] for k, runs in groups.items()}
    few = evaluate_check(Check("auc", "new", "base"), two)
    assert few["ci"] is None and few["verdict"] == INCONCLUSIVE and "fewer than 3 seeds" in few["note"]


def test_two_level_check_on_cases_with_two_seeds():
    def runs(shift):
        return [_run(s, cases={"eval/case.dice": {f"{subj}": (subj, 0.5 + shift) for subj in "ABCD"}},
                     **{"eval/case.dice": 0.5 + shift}) for s in (0, 1)]
    result = evaluate_check(Check("eval/case.dice", "new", "base", min_effect=0.01),
                            {"base": runs(0.0), "new": runs(0.1)})
    assert result["ci"] == pytest.approx([0.1, 0.1]) and result["verdict"] == SUPPORTED
    assert result["covers"].startswith("cases (subjects) only") and result["n_cases"] == 8
    rounds = evaluate_check(Check("eval/case.dice", "new", "base", unit="timing rounds"),
                            {"base": runs(0.0), "new": runs(0.1)})
    assert rounds["covers"].startswith("cases (timing rounds) only") and rounds["ci"] == result["ci"]


def test_auc_check_against_chance():
    def run(seed, probs):
        grades = {"A": 1, "B": 1, "C": 0, "D": 0}
        return _run(seed, cases={"validation/case.hgg_prob": {k: (k, p) for k, p in zip("ABCD", probs)},
                                 "validation/case.grade": {k: (k, g) for k, g in grades.items()}})
    check = Check("validation/case.hgg_prob", "staged", None, reference=0.5, min_effect=0.05,
                  labels="validation/case.grade")
    learned = evaluate_check(check, {"staged": [run(s, (0.9, 0.8, 0.2, 0.1)) for s in range(3)]})
    assert learned["variant_mean"] == 1.0 and learned["ci"] == pytest.approx([0.5, 0.5])
    assert learned["verdict"] == SUPPORTED and learned["covers"] == "seeds and subjects within each class"
    inverted = evaluate_check(check, {"staged": [run(0, (0.1, 0.2, 0.8, 0.9))]})
    assert inverted["diff"] == -0.5 and inverted["verdict"] == NOT_SUPPORTED and "4 subjects" in check_line(inverted)
    missing = evaluate_check(check, {"staged": [_run(0)]})
    assert missing["verdict"] == INCONCLUSIVE and "per-case validation/case.hgg_prob" in missing["note"]
    with pytest.raises(ValueError, match="constant reference"):
        Check("validation/case.hgg_prob", "staged", "seg_only", labels="validation/case.grade")


def test_exact_check_needs_no_seeds():
    groups = {"dit": [_run(0, params_m=0.46)], "unet": [_run(0, params_m=0.18)]}
    fewer = evaluate_check(Check("params_m", "unet", "dit", direction="lower", exact=True), groups)
    assert fewer["ci"] == pytest.approx([-0.28, -0.28]) and fewer["verdict"] == SUPPORTED
    more = evaluate_check(Check("params_m", "dit", "unet", direction="lower", exact=True), groups)
    assert more["verdict"] == NOT_SUPPORTED and more["covers"] == "nothing: an exact quantity"


def test_competence_gate_makes_a_claim_untestable():
    groups = {"base": [_run(0, auprc=0.10, flair=0.30, prevalence=0.02), _run(1, auprc=0.12, flair=0.34,
                                                                             prevalence=0.02)]}
    random_gate = evaluate_gate(Gate("base", "auprc", "prevalence", factor=2.0), groups)
    assert random_gate["passed"] and random_gate["value"] == pytest.approx(0.11)
    assert random_gate["threshold"] == pytest.approx(0.04)
    flair_gate = evaluate_gate(Gate("base", "auprc", "flair", label="FLAIR thresholding"), groups)
    assert not flair_gate["passed"] and flair_gate["threshold"] == pytest.approx(0.32)
    assert "FLAIR thresholding" in gate_line(flair_gate) and gate_line(flair_gate).endswith("fails")
    missing = evaluate_gate(Gate("base", "psnr", None, reference=20.0), groups)
    assert not missing["passed"] and missing["note"] == "missing in base"
    supported = {"verdict": SUPPORTED}
    assert claim_verdict([supported], [random_gate, flair_gate]) == UNTESTABLE
    assert claim_verdict([supported], [random_gate]) == SUPPORTED
