"""compare_runs on run directories built by the real BEA scripts (tiny, 3 steps): tables, deltas,
intervals against values computed by hand, config diff, curves and samples, bad input."""

import base64
import itertools
import json
import math
import os
import re

import numpy as np
import pytest
import torch
from matplotlib import image as mpl_image
from torchmetrics.functional.classification import binary_auroc

from plugins.common.errors import run_main
from plugins.report import compare, read_groups, write_report
from plugins.common.run_log import write_case_table
from plugins.report.stats import auc_ci, bootstrap_ci, two_level_ci

TRAIN = ["--image_size", "32", "--num_channels", "32", "--num_res_blocks", "1", "--attention_resolutions", "8",
         "--num_heads", "1", "--batch_size", "4", "--diffusion_steps", "30", "--log_interval", "1",
         "--val_fraction", "0.4", "--max_steps", "3", "--save_interval", "3"]
FPDM = ["--image_size", "32", "--t_max", "30", "--t_stride", "10", "--batch_size", "8",
        "--slice_step", "3"]
VARIANTS = {"mse": ["--boundary_loss_weight", "0"], "dual": []}


@pytest.fixture(scope="module")
def bea_runs(tmp_path_factory, tiny_cohort, load_script):
    """{variant: [run seed 0, run seed 1]}: trained 3 steps and scored by FPDM through the scripts."""
    import torch.distributed as dist
    from guided_diffusion import dist_util, logger

    train, fpdm = load_script("train_bea_dual_loss"), load_script("translation_FPDM_bea_dual_loss")
    root = tmp_path_factory.mktemp("runs")
    runs = {}
    saved = dict(os.environ)
    try:
        for variant, flags in VARIANTS.items():
            for seed in (0, 1):
                run = root / f"{variant}_s{seed}"
                dist_util.setup_dist()
                assert run_main(train.main, ["--data_dir", str(tiny_cohort), "--out_dir", str(run), "--seed",
                                             str(seed), *TRAIN, *flags]) == 0
                logger.get_current().close()
                assert run_main(fpdm.main, ["--model_path", str(run), "--out_dir", str(run / "fpdm"),
                                            "--seed", str(seed), *FPDM]) == 0
                runs.setdefault(variant, []).append(run)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        os.environ.clear()
        os.environ.update(saved)
    return runs


def _auprc(run, subset="mixed"):
    return json.loads((run / "fpdm" / "metrics.json").read_text())["metrics"][subset]["auprc"]


@pytest.fixture(scope="module")
def report(bea_runs, tmp_path_factory):
    specs = [f"{v}={','.join(map(str, runs))}" for v, runs in bea_runs.items()]
    groups = read_groups(specs)
    result = compare(groups)
    out = tmp_path_factory.mktemp("report") / "bea"
    write_report(groups, result, str(out), "mse vs dual", "tiny test scale")
    return result, out


def test_means_deltas_and_paired_interval_by_hand(bea_runs, report):
    result, _ = report
    b = [_auprc(r) for r in bea_runs["mse"]]
    v = [_auprc(r) for r in bea_runs["dual"]]
    row = result["metrics"]["fpdm/mixed.auprc"]
    assert row["mse"]["mean"] == pytest.approx((b[0] + b[1]) / 2)
    assert row["dual"]["std"] == pytest.approx(abs(v[0] - v[1]) / math.sqrt(2))
    delta = result["deltas"]["fpdm/mixed.auprc"]["dual"]
    assert delta["abs"] == pytest.approx((v[0] + v[1]) / 2 - (b[0] + b[1]) / 2)
    assert delta["rel"] == pytest.approx(delta["abs"] / abs((b[0] + b[1]) / 2))
    # two seeds and a pooled metric: no interval (a bootstrap over 2 values is just their range)
    assert result["paired"] == {"dual": True}
    assert delta["ci"] is None and delta["covers"] is None and not delta["excludes_zero"]


def test_config_diff_curves_and_costs(report):
    result, _ = report
    diff = result["config_diff"]
    assert set(diff) == {"boundary_loss_weight", "seed"}
    assert diff["boundary_loss_weight"] == {"mse (seed 0)": 0.0, "mse (seed 1)": 0.0, "dual (seed 0)": 0.3,
                                            "dual (seed 1)": 0.3}
    assert result["cost"]["step_time_s"]["dual"]["n"] == 2 and result["cost"]["peak_mem_mb"]["mse"]["mean"] > 0


def test_report_files_markdown_html_and_images(bea_runs, report):
    result, out = report
    md = (out / "report.md").read_text()
    mean = result["metrics"]["fpdm/mixed.auprc"]["dual"]["mean"]
    assert re.search(r"\| fpdm/mixed\.auprc \| dual \| 2 \| " + re.escape(f"{mean:.4g}"), md)
    assert "| boundary_loss_weight | 0.0 | 0.0 | 0.3 | 0.3 |" in md
    for name in ("step_loss.png", "step_mse.png", "step_l_bea.png"):
        assert mpl_image.imread(out / "curves" / name).shape[2] in (3, 4)
    assert sorted(os.listdir(out / "samples")) == ["dual__fpdm_grid.png", "mse__fpdm_grid.png"]
    html = (out / "index.html").read_text()
    images = re.findall(r'<img src="([^"]+)"', html)
    assert len(images) == len(os.listdir(out / "curves")) + 2
    assert all(src.startswith("data:image/png;base64,") for src in images)
    grid = (bea_runs["dual"][0] / "fpdm" / "grid.png").read_bytes()
    assert base64.b64encode(grid).decode() in html
    assert json.loads((out / "summary.json").read_text())["baseline"] == "mse"


def _fake_run(path, seed, metrics, extra_config=None, steps=(), cases=None, val=None):
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"seed": seed, "lr": 1e-4, **(extra_config or {})}))
    (path / "metrics.json").write_text(json.dumps({"metrics": metrics}))
    (path / "metrics_step.jsonl").write_text("".join(json.dumps({"step": s, "loss": 1 / (s + 1)}) + "\n"
                                                     for s in steps))
    if cases:
        write_case_table(str(path / "cases.csv"), cases)
    if val is not None:
        (path / "split.json").write_text(json.dumps({"train": ["T"], "val": val}))
    return str(path)


def _percentile_interval(values):
    return tuple(float(x) for x in np.quantile(values, [0.025, 0.975], method="inverted_cdf"))


def test_unpaired_interval_and_unequal_metrics_by_hand(tmp_path):
    base = [_fake_run(tmp_path / f"b{s}", s, {"score": x, "only_base": 1.0}) for s, x in ((0, 1.0), (1, 2.0), (2, 3.0))]
    var = [_fake_run(tmp_path / f"v{s}", s, {"score": x}, {"lr": 3e-4}) for s, x in ((3, 4.0), (4, 6.0), (5, 8.0))]
    groups = read_groups(["base=" + ",".join(base), "var=" + ",".join(var)])
    result = compare(groups)
    # unpaired (seeds differ): every one of the 27 x 27 equally likely resample pairs, enumerated by hand
    means = lambda xs: [sum(t) / 3 for t in itertools.product(xs, repeat=3)]  # noqa: E731
    expected = _percentile_interval([v - b for v in means([4.0, 6.0, 8.0]) for b in means([1.0, 2.0, 3.0])])
    assert result["paired"] == {"var": False}
    delta = result["deltas"]["score"]["var"]
    assert delta["abs"] == 4.0 and delta["rel"] == 2.0 and delta["ci"] == pytest.approx(expected)
    assert delta["excludes_zero"] and delta["covers"] == "seeds"
    assert result["missing"] == {"only_base": ["var (seed 3)", "var (seed 4)", "var (seed 5)"]}
    assert result["deltas"]["only_base"]["var"] is None
    assert set(result["config_diff"]) == {"lr", "seed"}
    write_report(groups, result, str(tmp_path / "rep"), "t")
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "only_base: missing in var (seed 3), var (seed 4), var (seed 5)" in md
    assert f"[{expected[0]:.4g}, {expected[1]:.4g}] | ✔ | seeds |" in md and "at least 3 seeds" in md


def test_two_level_interval_resamples_subjects_with_all_their_cases():
    # one seed; subject A has two cases with d = 0, subject B one with d = 3: a resample of two subjects
    # is {A, A} (mean 0), {A, B} (1) or {B, B} (3), so the 95% interval is [0, 3], cases only
    base = {0: {"A:1": ("A", 1.0), "A:2": ("A", 2.0), "B:1": ("B", 0.0)}}
    var = {0: {"A:1": ("A", 1.0), "A:2": ("A", 2.0), "B:1": ("B", 3.0)}}
    ci, covers, n = two_level_ci(base, var, seed=1)
    assert ci == (0.0, 3.0) and n == 3 and covers.startswith("cases (subjects) only")
    constant = {s: {f"{c}": (c, 0.5) for c in "ABCD"} for s in range(3)}  # d = v - 0 = 0.5 everywhere
    ci, covers, _ = two_level_ci(None, constant)
    assert ci == pytest.approx((0.5, 0.5)) and covers == "seeds and cases (subjects)"
    # seed-to-seed variation is covered with 3 seeds: seed means 0, 1, 2 (every case of a seed equal)
    spread = {s: {c: (c, float(s)) for c in "ABCD"} for s in range(3)}
    ci, _, _ = two_level_ci(None, spread, seed=0)
    assert ci[0] < 0.7 and ci[1] > 1.3
    assert two_level_ci(None, {0: {"A": ("A", 1.0)}})[0] is None


def test_auc_interval_resamples_subjects_within_each_class():
    def table(values):
        return {0: {subj: (subj, v) for subj, v in values.items()}}
    # positives A (0.9), B (0.2), negative C (0.5): pairs (A, C) = 1, (B, C) = 0, AUC 0.5; a stratified
    # resample draws two positives and C: {A, A} (AUC 1), {A, B} (0.5), {B, B} (0), so the interval is [0, 1]
    aucs, ci, covers = auc_ci(table({"A": 0.9, "B": 0.2, "C": 0.5}), table({"A": 1, "B": 1, "C": 0}), seed=0)
    assert aucs == {0: 0.5} and ci == pytest.approx((-0.5, 0.5)) and covers.startswith("subjects within each class")
    _, separated, _ = auc_ci(table({"A": 0.9, "B": 0.8, "C": 0.1}), table({"A": 1, "B": 1, "C": 0}))
    assert separated == pytest.approx((0.5, 0.5))  # every resample ranks both positives above the negative
    # the statistic is the area under the ROC curve, ties counted half (torchmetrics' AUROC)
    rng = np.random.default_rng(3)
    scores, labels = np.round(rng.random(40), 1), np.r_[np.ones(25), np.zeros(15)].astype(int)
    expected = binary_auroc(torch.tensor(scores), torch.tensor(labels)).item()
    subjects = [f"s{i}" for i in range(40)]
    aucs, _, _ = auc_ci({0: dict(zip(subjects, zip(subjects, scores)))},
                        {0: dict(zip(subjects, zip(subjects, labels)))})
    assert aucs[0] == pytest.approx(expected)
    three = {s: table({"A": 0.9, "B": 0.2, "C": 0.5})[0] for s in range(3)}
    three_labels = {s: table({"A": 1, "B": 1, "C": 0})[0] for s in range(3)}
    assert auc_ci(three, three_labels)[2] == "seeds and subjects within each class"
    one_class = auc_ci(table({"A": 0.9, "B": 0.2}), table({"A": 1, "B": 1}))
    assert one_class[1] is None and "labels 0 and 1" in one_class[2]
    slices = {0: {"A:1": ("A", 0.9), "A:2": ("A", 0.8), "C:1": ("C", 0.1)}}
    assert auc_ci(slices, {0: {c: (subj, int(subj == "A")) for c, (subj, _) in slices[0].items()}})[2] == (
        "an AUC interval needs one case per subject")


def test_per_case_tables_and_refusal_of_other_validation_subjects(tmp_path, load_script, capsys):
    rows = lambda d: [{"case": f"{s}:{i}", "subject": s, "dice": 0.5 + d * (s == "B")}  # noqa: E731
                      for s in "AB" for i in range(2)]
    base = _fake_run(tmp_path / "b", 0, {"score": 1.0}, cases=rows(0.0), val=["A", "B"])
    var = _fake_run(tmp_path / "v", 0, {"score": 2.0}, cases=rows(0.2), val=["A", "B"])
    for run, ref in ((base, 0.3), (var, 0.4)):  # references beside "metrics" are read; other metadata is not
        with open(os.path.join(run, "metrics.json"), "w") as f:
            json.dump({"metrics": {"score": 1.0}, "reference_flair": {"dice": ref}, "protocol": {"w": 2}}, f)
    result = compare(read_groups([base, var]))
    assert result["metrics"]["reference_flair.dice"]["v"]["mean"] == 0.4 and "protocol.w" not in result["metrics"]
    delta = result["deltas"]["case.dice"]["v"]
    assert result["metrics"]["case.dice"]["v"]["mean"] == pytest.approx(0.6)
    assert delta["ci"] == pytest.approx([0.0, 0.2]) and delta["covers"].startswith("cases (subjects) only")
    assert result["deltas"]["score"]["v"]["ci"] is None and result["not_comparable"] == {}

    other = _fake_run(tmp_path / "o", 0, {"score": 2.0}, cases=rows(0.2), val=["A", "C"])
    result = compare(read_groups([base, other]))
    assert "2 of 3 validation subjects differ" in result["not_comparable"]["o"]
    assert result["deltas"]["score"]["o"] is None
    assert run_main(load_script("compare_runs").main, [base, other, "--out_dir", str(tmp_path / "rep")]) == 0
    assert "not compared: o validated on other subjects than the baseline" in capsys.readouterr().out
    fewer = _fake_run(tmp_path / "f", 0, {"score": 2.0}, cases=rows(0.2)[:3])
    assert "scored on other cases" in compare(read_groups([base, fewer]))["not_comparable"]["f"]
    # a table without a subject column resamples each case on its own, and the interval says so
    plain = lambda d: [{k: v for k, v in r.items() if k != "subject"} for r in rows(d)]  # noqa: E731
    unnamed = [_fake_run(tmp_path / n, 0, {"score": 1.0}, cases=plain(d)) for n, d in (("ub", 0.0), ("uv", 0.2))]
    assert compare(read_groups(unnamed))["deltas"]["case.dice"]["uv"]["covers"].startswith(
        "cases (no subject column) only")


def test_bootstrap_enumerates_small_samples_and_draws_large_ones():
    assert bootstrap_ci(None, [0.0, 1.0, 5.0], paired=False) == (0.0, 5.0)  # 1/27 < 2.5% at each end
    assert bootstrap_ci([0.0], [1.0], paired=False) is None
    big = bootstrap_ci(list(range(10)), [x + 2.0 for x in range(10)], paired=True)  # constant difference
    assert big == pytest.approx((2.0, 2.0))
    drawn = bootstrap_ci(None, [float(x) for x in range(10)], paired=False, seed=3)
    assert drawn == bootstrap_ci(None, [float(x) for x in range(10)], paired=False, seed=3)
    assert 2.0 < drawn[0] < 4.5 < drawn[1] < 7.0


def test_cli_prints_the_table_and_refuses_bad_runs(tmp_path, load_script, capsys):
    compare_runs = load_script("compare_runs")
    good = _fake_run(tmp_path / "good", 0, {"score": 1.0}, steps=range(3))
    other = _fake_run(tmp_path / "other", 0, {"score": 2.0}, steps=range(3))
    assert run_main(compare_runs.main, [good, other, "--out_dir", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    assert re.search(r"score\s+other\s+1\s+2\s+1\s+\+100\.0%", out) and "report: " in out
    assert os.listdir(tmp_path / "rep" / "curves") == ["step_loss.png"]

    (tmp_path / "noconfig").mkdir()
    bad_jsonl = _fake_run(tmp_path / "badlog", 1, {})
    with open(os.path.join(bad_jsonl, "metrics_step.jsonl"), "w") as f:
        f.write('{"step": 0}\nnot json\n')
    cases = [([good, str(tmp_path / "nowhere")], "no such run directory"),
             ([good, str(tmp_path / "noconfig")], "config.json: missing"),
             ([good, bad_jsonl], "metrics_step.jsonl: line 2 is not a JSON object"),
             ([good, f"good={other}"], "the variant name 'good' is given twice"),
             ([good, "--resamples", "5"], "--resamples: got 5")]
    for argv, message in cases:
        assert run_main(compare_runs.main, [*argv, "--out_dir", str(tmp_path / "never")]) == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and message in errors[0], (argv, errors)
        assert not (tmp_path / "never").exists()
