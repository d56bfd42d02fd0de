"""Grade CSV rules, class counts/weights, and the subject-level stratified split."""

import json
import os

import pytest

from plugins.common.errors import InputError
from plugins.data import build_brats_datasets, class_stats, read_grade_csv, stratified_split
from plugins.data.splits import check_checkpoint_split, cohort_split, keep_run_split, run_split
from plugins.data.demo_cohort import write_cohort


def write_csv(path, text):
    path.write_text(text)
    return str(path)


def test_grades_accept_whitespace_and_case(tmp_path):
    path = write_csv(tmp_path / "m.csv", " Grade , BraTS_2020_subject_ID\n  hgg ,  S1 \nLgG,S2\nHGG,S3\n")
    assert read_grade_csv(path, ["S1", "S2"]) == {"S1": 1, "S2": 0}
    assert read_grade_csv(path) == {"S1": 1, "S2": 0, "S3": 1}


@pytest.mark.parametrize("text, message", [
    ("Grade,BraTS_2020_subject_ID\nHGG,S1\nGBM,S2\n", "line 3 (S2): unknown grade 'GBM'; expected HGG or LGG"),
    ("Grade,BraTS_2020_subject_ID\nHGG,S1\n,S2\n", "line 3 (S2): unknown grade ''"),
    ("Grade,Subject\nHGG,S1\n", "missing column 'BraTS_2020_subject_ID'"),
    ("BraTS_2020_subject_ID\nS1\n", "missing column 'Grade'"),
    ("Grade,BraTS_2020_subject_ID\nHGG,S1\nLGG,S2\nLGG, S1\n", "duplicate subject S1 (lines 2 and 4)"),
    ("Grade,BraTS_2020_subject_ID\nHGG,S1\n", "2 subject(s) on disk have no grade: S2, S3"),
])
def test_grade_csv_refusals(tmp_path, text, message):
    path = write_csv(tmp_path / "name_mapping.csv", text)
    with pytest.raises(InputError) as err:
        read_grade_csv(path, ["S1", "S2", "S3"])
    assert message in str(err.value) and "name_mapping.csv" in str(err.value)
    assert "\n" not in str(err.value)


def test_class_stats_formula():
    stats = class_stats([0] * 76 + [1] * 293)
    assert stats["n_LGG"] == 76 and stats["n_HGG"] == 293
    assert stats["alpha_LGG"] == pytest.approx(369 / (2 * 76)) == pytest.approx(2.4276, abs=1e-4)
    assert stats["alpha_HGG"] == pytest.approx(369 / (2 * 293))
    with pytest.raises(InputError, match="n_LGG=0"):
        class_stats([1, 1, 1])


def test_split_is_stratified_disjoint_and_seeded():
    subjects = [f"S{i:03d}" for i in range(50)]
    grades = {s: int(i % 5 != 0) for i, s in enumerate(subjects)}  # 10 LGG, 40 HGG
    split = stratified_split(subjects, grades, 0.2, seed=3)
    train, val = set(split["train"]), set(split["val"])
    assert not train & val and train | val == set(subjects)
    assert len(val) == 10 and sum(grades[s] == 0 for s in val) == 2
    assert split == stratified_split(list(reversed(subjects)), grades, 0.2, seed=3)
    assert split["val"] != stratified_split(subjects, grades, 0.2, seed=4)["val"]
    tiny = stratified_split(["A", "B", "C"], {"A": 1, "B": 1, "C": 0}, 0.2, seed=0)
    assert len(tiny["val"]) == 1 and "C" in tiny["train"]  # every grade keeps a training subject
    with pytest.raises(InputError, match="--val_fraction"):
        stratified_split(subjects, grades, 1.0)


def test_cohort_split_is_written_once_and_checked(tmp_path):
    subjects = [f"S{i}" for i in range(10)]
    grades = {s: int(i % 3 != 0) for i, s in enumerate(subjects)}
    logs = []
    first, path = cohort_split(str(tmp_path), subjects, grades, 0.2, 0, log=logs.append)
    assert path == str(tmp_path / "splits" / "split_val0.2_seed0.json") and "stratified by grade" in logs[-1]
    assert json.loads(open(path).read())["val"] == first["val"] == stratified_split(subjects, grades, 0.2, 0)["val"]
    again, _ = cohort_split(str(tmp_path), list(reversed(subjects)), grades, 0.2, 0, log=logs.append)
    assert again == first and logs[-1].startswith("split ")
    with pytest.raises(InputError, match="split_val0.2_seed0.json: this cohort's subjects or grades now give another"):
        cohort_split(str(tmp_path), subjects[1:], grades, 0.2, 0, log=logs.append)
    with pytest.raises(InputError, match="grades now known"):
        cohort_split(str(tmp_path), subjects, None, 0.2, 0, log=logs.append)  # drawn with grades, now without
    other, _ = cohort_split(str(tmp_path), subjects, grades, 0.2, 1, log=logs.append)
    assert other["val"] != first["val"]


def test_split_file_is_used_as_it_is(tmp_path):
    subjects = [f"S{i}" for i in range(6)]
    hand = tmp_path / "mine.json"
    hand.write_text(json.dumps({"train": ["S0", "S1", "S2"], "val": ["S3"]}))
    logs = []
    split, path = cohort_split(str(tmp_path), subjects, None, 0.5, 7, split_file=str(hand), log=logs.append)
    assert split["val"] == ["S3"] and path == str(hand) and "2 subject(s) on disk left out" in logs[-1]
    assert cohort_split(str(tmp_path), subjects, None, 1.0, 7, split_file=str(hand), log=logs.append)[0] == split
    assert not (tmp_path / "splits").exists()  # nothing drawn: --val_fraction and --split_seed are not read
    with pytest.raises(InputError, match=r"--split_file .*mine.json: 1 subject\(s\) are not in --data_dir: S3"):
        cohort_split(str(tmp_path), ["S0", "S1", "S2"], None, split_file=str(hand), log=logs.append)
    hand.write_text(json.dumps({"train": ["S0", "S3"], "val": ["S3"]}))
    with pytest.raises(InputError, match="subjects in both train and val: S3"):
        cohort_split(str(tmp_path), subjects, None, split_file=str(hand), log=logs.append)
    hand.write_text("[1, 2]")
    with pytest.raises(InputError, match="expected a JSON object with 'train' and 'val'"):
        cohort_split(str(tmp_path), subjects, None, split_file=str(hand), log=logs.append)


def test_run_and_checkpoint_splits_must_match(tmp_path):
    a = {"train": ["S0", "S1"], "val": ["S2"]}
    b = {"train": ["S0", "S2"], "val": ["S1"]}
    keep_run_split(str(tmp_path / "run"), a, "cohort_a.json")
    keep_run_split(str(tmp_path / "run"), a, "cohort_a.json")  # the same split: a resume
    assert run_split(str(tmp_path / "run")) == {"source": "cohort_a.json", "seed": None, "val_fraction": None, **a}
    assert run_split(str(tmp_path / "elsewhere")) is None
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "split.json").write_text(json.dumps({"train": ["S0"], "val": ["S0"]}))
    with pytest.raises(InputError, match=r"bad.split\.json: subjects in both train and val: S0"):
        run_split(str(tmp_path / "bad"))
    with pytest.raises(InputError, match=r"run.split\.json: this run was trained on another split than cohort_b"):
        keep_run_split(str(tmp_path / "run"), b, "cohort_b.json")
    checkpoint = str(tmp_path / "run" / "model000002.pt")
    check_checkpoint_split(checkpoint, a, "cohort_a.json")
    with pytest.raises(InputError, match=r"model000002.pt: trained on the split .*split.json, which differs from "
                                         r"this run's split cohort_b.json"):
        check_checkpoint_split(checkpoint, b, "cohort_b.json")
    logs = []
    check_checkpoint_split(str(tmp_path / "elsewhere" / "model000001.pt"), b, "cohort_b.json", log=logs.append)
    assert "cannot be checked" in logs[-1]


def test_build_prints_training_class_stats(tmp_path):
    data_dir = str(tmp_path / "brats")
    grades = write_cohort(data_dir, 5, seed=4, shape=(48, 48, 24), progress=False)
    logs = []
    data = build_brats_datasets(data_dir, str(tmp_path / "run"), os.path.join(data_dir, "name_mapping.csv"),
                                val_fraction=0.2, split_seed=0, cache_dir=str(tmp_path / "cache"), log=logs.append,
                                progress=False)
    train = data.split["train"]
    n_lgg = sum(grades[s] == 0 for s in train)
    assert data.class_stats["n_LGG"] == n_lgg and data.class_stats["n_HGG"] == len(train) - n_lgg
    assert any(line.startswith(f"training split: n_LGG={n_lgg} n_HGG={len(train) - n_lgg} alpha_LGG=")
               for line in logs)
    assert set(data.train.subjects) == set(train) and set(data.val.subjects) == set(data.split["val"])
    assert {data.train[i]["subject"] for i in range(len(data.train))} == set(train)
