"""The reliability sweep (issue 17) as tests: every case with its expected outcome.

:data:`CASES` is the list the next sweep starts from: ``(case id, what is tried, expected outcome,
test)``. Each test named there exists (checked by :func:`test_every_case_has_a_test`); the resume
cases live in ``tests/test_reliability_resume.py``.
"""

import json
import os
import subprocess
import sys
import textwrap

import nibabel
import numpy as np
import pytest
import yaml
from guided_diffusion import logger

from plugins.common.errors import InputError, run_main
from plugins.common.run_dir import claim_run_dir, release_run_dir
from plugins.report.runs import drop_replayed, read_run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFUSED = "refused: one 'error:' line naming it, exit 2, nothing changed"

CASES = [
    # data loss
    ("D1", "compare_runs.py A B --out_dir B (a run directory)", REFUSED + "; B intact", "test_report_into_a_run_is_refused"),
    ("D2", "compare_runs.py --out_dir an existing folder with other files", REFUSED, "test_report_into_a_foreign_folder_is_refused"),
    ("D3", "compare_runs.py --out_dir an existing file", REFUSED, "test_report_into_a_foreign_folder_is_refused"),
    ("D4", "compare_runs.py --out_dir an earlier report / an empty folder", "written (the earlier report replaced)", "test_report_into_a_foreign_folder_is_refused"),
    ("D5", "make_demo_data.py --kind brats where D/brats holds a file it did not write", REFUSED, "test_demo_data_never_deletes_foreign_files"),
    ("D6", "make_demo_data.py run twice into one folder", "the second replaces its own set", "test_demo_data_never_deletes_foreign_files"),
    ("D7", "make_demo_data.py --kind brats after a training run wrote D/brats/splits/", "the set is replaced (the split is derived)", "test_demo_cohort_rebuilds_after_a_split"),
    # two runs in one directory
    ("M1", "training into a run directory of another configuration (lr, lambda, backbone ...)", REFUSED + ", naming the differing keys", "test_training_into_another_run_is_refused"),
    ("M2", "training again into the same run without --resume_checkpoint", REFUSED + ", pointing at --resume_checkpoint latest", "test_training_into_another_run_is_refused"),
    ("M3", "a second training while another process trains in the directory", REFUSED + ", naming the holder", "test_a_locked_run_directory_is_refused"),
    ("M4", "a stale lock file of a dead process", "the run starts", "test_a_locked_run_directory_is_refused"),
    ("M5", "segmentation_train_staged.py --stage 2 into stage 1's directory", REFUSED + ", naming stage", "test_stage_two_in_stage_one_directory_is_refused"),
    ("M6", "train_sr.py / train_autoencoder.py --resume_checkpoint latest into another configuration", REFUSED + ", naming the keys", "test_latent_trainers_refuse_another_run"),
    ("M7", "a resume whose parsed config holds tuples (value_range, modalities) where config.json has lists", "compared as config.json reads back: no refusal", "test_saved_config_compares_as_read_back"),
    # exact resume (tests/test_reliability_resume.py)
    ("R1", "BEA: N straight steps vs N/2 + kill + latest", "bit-equal weights, EMA, optimizer; each step logged once", "test_bea_resume_equals_straight_run"),
    ("R2", "train_sr.py / train_sr_pixel.py: the same", "bit-equal", "test_sr_resume_equals_straight_run"),
    ("R3", "train_autoencoder.py (adversarial, denoising): the same", "bit-equal", "test_autoencoder_resume_equals_straight_run"),
    ("R4", "compare_runs.py on a run whose metrics hold replayed steps", "each step once (the replay's values)", "test_replayed_steps_count_once"),
    # bad data
    ("B1", "an all-zero (constant) modality", REFUSED, "test_bad_volumes_are_refused"),
    ("B2", "a complex-valued NIfTI", REFUSED, "test_bad_volumes_are_refused"),
    ("B3", "a float64 volume that overflows float32", REFUSED, "test_bad_volumes_are_refused"),
    ("B4", "a subject whose volumes yield no usable slice", "a warning line naming it, a count in the summary, exit 0", "test_subject_without_slices_is_warned_and_counted"),
    ("B5", "one NaN voxel in an autoencoder volume", REFUSED, "test_autoencoder_nan_volume_is_refused"),
    ("B6", "a YAML file with a repeated key (SR --config, backbone YAML, autoencoder config)", REFUSED + ", naming the key", "test_duplicate_yaml_keys_are_refused"),
    ("B7", "a backbone YAML without the chosen backbone's block", REFUSED, "test_missing_backbone_block_is_refused"),
    ("B8", "the disk fills while a checkpoint is written", "one line naming the file and the cause; no opt/state/ema file without its model", "test_full_disk_during_a_checkpoint"),
    ("B8b", "the disk fills while an accelerate checkpoint (train_sr.py) is written", "one line naming the folder and the cause; no half checkpoint folder", "test_full_disk_during_an_accelerate_checkpoint"),
    ("B9", "a read-only folder as --out_dir", REFUSED, "test_weak_refusals_are_one_line"),
    # weak refusals
    ("W1", "--lr nan, --lr -1e-4, a BEA feature block out of range, an existing file as --out_dir", REFUSED, "test_weak_refusals_are_one_line"),
    ("W2", "--fpdm_modalities flair,pd", REFUSED + ", naming --fpdm_modalities", "test_fpdm_modalities_named"),
    ("W3", "train_sr.py --learning_rate -1e-4", REFUSED, "test_latent_trainers_refuse_another_run"),
    ("W4", "a truncated safetensors denoiser", REFUSED, "test_truncated_pipeline_is_refused"),
    ("W5", "a bad input under accelerate launch (scripts/launch.py)", "one 'error:' line, exit 2, no traceback", "test_launch_wrapper_keeps_the_error_contract"),
    ("W6", "--lr -1e-4 / --value_range -1,1 (argparse took them for flags)", "read as values", "test_negative_values_are_values"),
]

BEA_TINY = ["--image_size", "32", "--num_channels", "32", "--num_res_blocks", "1", "--attention_resolutions", "8",
            "--num_heads", "1", "--batch_size", "4", "--diffusion_steps", "30", "--val_fraction", "0.4"]


def test_every_case_has_a_test():
    from tests import test_reliability_resume

    names = set(globals()) | set(vars(test_reliability_resume))
    assert not [c for c in CASES if c[3] not in names]
    assert len({c[0] for c in CASES}) == len(CASES)


def error_lines(err: str) -> list[str]:
    """The ``error:`` lines of ``err`` (a progress bar may precede one on its line)."""
    return [line[line.index("error: "):] for line in err.splitlines() if "error: " in line]


def one_error(capsys, *needles):
    err = capsys.readouterr().err
    lines = error_lines(err)
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _gd(load_script, name, argv):
    from guided_diffusion import dist_util
    import torch.distributed as dist

    saved = dict(os.environ)
    dist_util.setup_dist()
    try:
        return run_main(load_script(name).main, [str(a) for a in argv])
    finally:
        logger.get_current().close()
        if dist.is_initialized():
            dist.destroy_process_group()
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="module")
def bea_run(tmp_path_factory, tiny_cohort, load_script):
    run = tmp_path_factory.mktemp("rel") / "bea"
    assert _gd(load_script, "train_bea_dual_loss",
               ["--data_dir", tiny_cohort, "--out_dir", run, "--max_steps", 1, "--log_interval", 1, *BEA_TINY]) == 0
    release_run_dir(run)
    return run


def _snapshot(folder):
    return {os.path.relpath(os.path.join(d, f), folder): os.path.getsize(os.path.join(d, f))
            for d, _, files in os.walk(folder) for f in files}


# ----------------------------------------------------------------- data loss
def test_report_into_a_run_is_refused(bea_run, load_script, tmp_path, capsys):
    before = _snapshot(bea_run)
    assert run_main(load_script("compare_runs").main, [f"a={bea_run}", f"b={bea_run}", "--out_dir", str(bea_run),
                                                       "--resamples", "100"]) == 2
    one_error(capsys, "--out_dir", str(bea_run))
    assert _snapshot(bea_run) == before
    inside = bea_run / "report"
    assert run_main(load_script("compare_runs").main, [str(bea_run), "--out_dir", str(inside)]) == 2
    one_error(capsys, "inside the run directory")
    assert not inside.exists()


def test_report_into_a_foreign_folder_is_refused(bea_run, load_script, tmp_path, capsys):
    main = load_script("compare_runs").main
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep")
    assert run_main(main, [str(bea_run), "--out_dir", str(folder)]) == 2
    one_error(capsys, "notes.txt")
    assert (folder / "notes.txt").read_text() == "keep" and sorted(os.listdir(folder)) == ["notes.txt"]
    a_file = tmp_path / "file.txt"
    a_file.write_text("keep")
    assert run_main(main, [str(bea_run), "--out_dir", str(a_file)]) == 2
    one_error(capsys, "not a folder")
    assert a_file.read_text() == "keep" and sorted(os.listdir(tmp_path)) == ["file.txt", "mine"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_main(main, [str(bea_run), "--out_dir", str(empty)]) == 0
    assert run_main(main, [str(bea_run), "--out_dir", str(empty)]) == 0  # an earlier report is replaced
    assert {"report.md", "index.html", "summary.json"} <= set(os.listdir(empty))


def test_demo_data_never_deletes_foreign_files(load_script, tmp_path, capsys):
    main = load_script("make_demo_data").main
    argv = ["--out_dir", str(tmp_path), "--kind", "filaments", "--num_filament_volumes", "1",
            "--filament_shape", "16,16,16"]
    assert run_main(main, argv) == 0
    assert run_main(main, argv) == 0  # its own set is replaced
    (tmp_path / "filaments" / "mine.txt").write_text("keep")
    before = _snapshot(tmp_path)
    assert run_main(main, argv) == 2
    one_error(capsys, "mine.txt", "did not write")
    assert _snapshot(tmp_path) == before
    user = tmp_path / "brats"
    user.mkdir()
    (user / "scan.nii.gz").write_bytes(b"user data")
    assert run_main(main, ["--out_dir", str(tmp_path), "--kind", "brats", "--num_subjects", "1",
                           "--shape", "16,16,16"]) == 2
    one_error(capsys, "scan.nii.gz")
    assert os.listdir(user) == ["scan.nii.gz"]


def test_demo_cohort_rebuilds_after_a_split(load_script, tmp_path):
    from plugins.data.grades import read_grade_csv
    from plugins.data.splits import cohort_split

    main = load_script("make_demo_data").main
    argv = ["--out_dir", str(tmp_path), "--kind", "brats", "--num_subjects", "3", "--shape", "16,16,16"]
    assert run_main(main, argv) == 0
    cohort = tmp_path / "brats"
    names = sorted(p.name for p in cohort.iterdir() if p.is_dir())
    _, path = cohort_split(str(cohort), names, read_grade_csv(str(cohort / "name_mapping.csv"), names), 0.4, 0)
    assert os.path.isfile(path) and os.path.dirname(os.path.dirname(path)) == str(cohort)
    assert run_main(main, argv) == 0
    assert not (cohort / "splits").exists()  # drawn again from the rebuilt cohort by the next run


# ----------------------------------------------------------------- mixed runs
def test_training_into_another_run_is_refused(bea_run, load_script, tiny_cohort, capsys):
    before = _snapshot(bea_run)
    common = ["--data_dir", tiny_cohort, "--out_dir", bea_run, "--max_steps", 2, "--log_interval", 1, *BEA_TINY]
    assert _gd(load_script, "train_bea_dual_loss", [*common, "--lr", "3e-4", "--boundary_loss_weight", "0.5",
                                                    "--resume_checkpoint", "latest"]) == 2
    one_error(capsys, "holds another run", "lr: 0.0001 -> 0.0003", "boundary_loss_weight: 0.3 -> 0.5")
    assert _gd(load_script, "train_bea_dual_loss", common) == 2
    one_error(capsys, "--resume_checkpoint latest")
    assert _snapshot(bea_run) == before


def test_a_locked_run_directory_is_refused(tmp_path):
    """Another process holds the directory's lock (flock, as claim_run_dir takes it); then it exits."""
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import fcntl, os, sys
        fd = os.open({str(run / ".lock")!r}, os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, f"pid {{os.getpid()}} on here".encode())
        print("locked", flush=True)
        sys.stdin.readline()
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(InputError, match=f"another training holds this run directory \\(pid {holder.pid} on here"):
            claim_run_dir(str(run), {}, resuming=False)
    finally:
        holder.communicate("\n")
    claim_run_dir(str(run), {}, resuming=False)  # the holder died: its lock file is stale
    release_run_dir(str(run))


def test_stage_two_in_stage_one_directory_is_refused(load_script, tiny_cohort, capsys):
    from tests.test_segdiff_train import TINY

    run = tiny_cohort.parent / "stage1_rel"
    common = ["--data_dir", tiny_cohort, *TINY, "--max_steps", "1", "--out_dir", run]
    assert _gd(load_script, "segmentation_train_staged", ["--stage", "1", *common]) == 0
    release_run_dir(run)
    config = (run / "config.json").read_text()
    assert _gd(load_script, "segmentation_train_staged",
               ["--stage", "2", *common, "--csv_path", tiny_cohort / "name_mapping.csv",
                "--resume_checkpoint", run]) == 2
    one_error(capsys, "stage 1", "stage 2")
    assert (run / "config.json").read_text() == config


def test_latent_trainers_refuse_another_run(tmp_path, capsys):
    from accelerate.state import AcceleratorState, GradientState

    from plugins.latent_sr.trainer import main as sr_main
    from tests.test_sr_fixtures import tiny_backbones_yaml, tiny_vae, train_argv, write_pairs

    data, vae = write_pairs(str(tmp_path / "data")), tiny_vae(str(tmp_path / "vae"))
    bb = tiny_backbones_yaml(str(tmp_path / "bb.yaml"))
    out = str(tmp_path / "sr")
    assert run_main(sr_main, train_argv(data, vae, bb, out, 1)) == 0
    release_run_dir(out)
    before = _snapshot(out)
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    assert run_main(sr_main, train_argv(data, vae, bb, out, 2, "--learning_rate", "2e-4",
                                        "--resume_from_checkpoint", "latest")) == 2
    one_error(capsys, "lr: 0.0001 -> 0.0002")
    assert _snapshot(out) == before
    assert run_main(sr_main, train_argv(data, vae, bb, str(tmp_path / "neg"), 1, "--learning_rate", "-1e-4")) == 2
    one_error(capsys, "--learning_rate: got -0.0001")


def test_saved_config_compares_as_read_back(tmp_path):
    from plugins.common.run_dir import config_differences
    from plugins.common.run_log import as_saved, check_config, read_config, write_config

    config = {"value_range": (-1, 1), "modalities": ("t1", "flair"), "lr": np.float32(0.5), "path": tmp_path}
    write_config(str(tmp_path), config)
    assert as_saved(config["value_range"]) == [-1, 1] and as_saved(config["path"]) == str(tmp_path)
    assert config_differences(read_config(str(tmp_path)), config) == []
    assert check_config(str(tmp_path), config, config) == read_config(str(tmp_path))
    with pytest.raises(InputError, match=r"--value_range \(0, 1\) \(the run has \[-1, 1\]\)"):
        check_config(str(tmp_path), {**config, "value_range": (0, 1)}, ["value_range"])


# ----------------------------------------------------------------- resume bookkeeping
def test_replayed_steps_count_once(tmp_path):
    records = [{"step": s, "loss": float(s)} for s in (0, 1, 2, 3, 4)] + [{"step": 3, "loss": 30.0},
                                                                      {"step": 4, "loss": 40.0}, {"step": 5, "loss": 5.0}]
    assert [(r["step"], r["loss"]) for r in drop_replayed(records, "step", strict=True)] == \
        [(0, 0.0), (1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0), (5, 5.0)]
    epochs = [{"epoch": 0, "a": 1}, {"epoch": 0, "b": 2}, {"epoch": 1, "a": 3}, {"epoch": 1, "a": 4}]
    assert drop_replayed(epochs, "epoch", strict=False) == epochs  # several lines per epoch are not replays
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "metrics_step.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert [r["step"] for r in read_run(str(tmp_path)).steps] == [0, 1, 2, 3, 4, 5]


# ----------------------------------------------------------------- bad data
@pytest.fixture
def small_cohort(tmp_path):
    from plugins.data.demo_cohort import write_cohort

    folder = tmp_path / "brats"
    write_cohort(str(folder), 2, seed=5, shape=(32, 32, 20), progress=False)
    return folder


def _nifti(folder, kind, subject="BraTS20_Training_002"):
    return folder / subject / f"{subject}_{kind}.nii.gz"


def _rewrite(path, data):
    img = nibabel.load(str(path))
    nibabel.save(nibabel.Nifti1Image(data, img.affine), str(path))


def _prepare(folder, tmp_path):
    from plugins.data import prepare

    return run_main(prepare.main, ["--data_dir", str(folder), "--cache_dir", str(tmp_path / "cache"),
                                   "--image_size", "16"])


@pytest.mark.parametrize("kind, make, needle", [
    ("t1", lambda d: np.zeros_like(d), "every voxel is 0"),
    ("t2", lambda d: d.astype(np.complex64) * (1 + 1j), "complex-valued"),
    ("flair", lambda d: np.where(d > 0, 1e300, 0.0).astype(np.float64), "overflow float32"),
])
def test_bad_volumes_are_refused(small_cohort, tmp_path, capsys, kind, make, needle):
    path = _nifti(small_cohort, kind)
    _rewrite(path, make(np.asanyarray(nibabel.load(str(path)).dataobj).astype(np.float64)))
    assert _prepare(small_cohort, tmp_path) == 2
    one_error(capsys, str(path), needle)


def test_subject_without_slices_is_warned_and_counted(small_cohort, tmp_path, capsys):
    for kind in ("t1", "t1ce", "t2", "flair"):
        path = _nifti(small_cohort, kind)
        data = np.asanyarray(nibabel.load(str(path)).dataobj).astype(np.float32)
        tiny = np.zeros_like(data)
        tiny[15:17, 15:17, :] = data.max()  # 4 voxels a slice: under the 5% brain fraction
        _rewrite(path, tiny)
    assert _prepare(small_cohort, tmp_path) == 0
    captured = capsys.readouterr()
    assert "warning: BraTS20_Training_002: no usable slice" in captured.err
    assert "1 subject(s) without a usable slice" in captured.out


def test_autoencoder_nan_volume_is_refused(tmp_path, capsys):
    from plugins.data.filaments import write_filament_set
    from scripts.train_autoencoder import main
    from tests.test_autoencoder_trainer import TINY

    data = tmp_path / "filaments"
    target = write_filament_set(str(data), num_volumes=3, shape=(16, 16, 16), seed=0)[0]
    array = np.asanyarray(nibabel.load(target).dataobj).astype(np.float32)
    array[3, 3, 3] = np.nan
    _rewrite(target, array)
    out = tmp_path / "run"
    assert run_main(main, ["--data_dir", str(data), "--out_dir", str(out), "--max_steps", "1", *TINY]) == 2
    one_error(capsys, os.path.basename(target), "NaN")


def test_duplicate_yaml_keys_are_refused(tmp_path, capsys):
    from plugins.autoencoder.config import load_config
    from plugins.backbones.registry import load_backbone_params
    from plugins.latent_sr.trainer import parse_config

    sr = tmp_path / "sr.yaml"
    sr.write_text("lr: 1e-4\nmax_steps: 3\nlr: 1e-3\n")
    with pytest.raises(InputError, match="duplicate key 'lr' \\(lines 1 and 3\\)"):
        parse_config(["--config", str(sr)])
    bb = tmp_path / "bb.yaml"
    bb.write_text("unet:\n  layers_per_block: 1\n  layers_per_block: 2\n")
    with pytest.raises(InputError, match="duplicate key 'layers_per_block'"):
        load_backbone_params(str(bb), "unet")
    ae = tmp_path / "ae.yaml"
    ae.write_text("autoencoder:\n  training:\n    batch_size: 2\n    batch_size: 4\n")
    with pytest.raises(InputError, match=f"{ae}: not valid YAML \\(duplicate key 'batch_size'"):
        load_config(str(ae))


def test_missing_backbone_block_is_refused(tmp_path):
    from plugins.backbones.registry import load_backbone_params

    path = tmp_path / "bb.yaml"
    path.write_text(yaml.safe_dump({"unet": {"layers_per_block": 1}}))
    with pytest.raises(InputError, match="expected a 'dit:' block .*blocks found: unet"):
        load_backbone_params(str(path), "dit")
    path.write_text("unet: {}\n")
    assert load_backbone_params(str(path), "unet") == {}  # an explicit empty block: the defaults, on purpose


def test_full_disk_during_a_checkpoint(load_script, tiny_cohort, tmp_path, capsys):
    """A file-size limit (EFBIG; a failed write like ENOSPC) that the first checkpoint hits."""
    import resource
    import signal

    from guided_diffusion import dist_util  # noqa: F401 - MPI starts before the limit (it maps large files)
    from plugins.data import prepare

    assert run_main(prepare.main, ["--data_dir", str(tiny_cohort), "--image_size", "32", "--value_range",
                                   "-1,1"]) == 0  # the run's slice cache is filled before the limit
    capsys.readouterr()
    out = tmp_path / "run"
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, hard))
    try:
        code = _gd(load_script, "train_bea_dual_loss", ["--data_dir", tiny_cohort, "--out_dir", out,
                                                        "--max_steps", 1, *BEA_TINY])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)
        release_run_dir(out)
    assert code == 2
    error = one_error(capsys, str(out), "cannot write the checkpoint (File too large)")
    files = os.listdir(out)
    steps = {f[-9:-3] for f in files if f.endswith(".pt")}
    assert all(f"model{s}.pt" in files for s in steps) and not [f for f in files if f.startswith(".tmp")], error


def test_full_disk_during_an_accelerate_checkpoint(tmp_path, capsys):
    import resource
    import signal

    from plugins.latent_sr.trainer import main as sr_main
    from tests.test_sr_fixtures import tiny_backbones_yaml, tiny_vae, train_argv, write_pairs

    data, vae = write_pairs(str(tmp_path / "data")), tiny_vae(str(tmp_path / "vae"))
    argv = train_argv(data, vae, tiny_backbones_yaml(str(tmp_path / "bb.yaml")), str(tmp_path / "run"), 2)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, hard))
    try:
        code = run_main(sr_main, argv)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)
        release_run_dir(tmp_path / "run")
    assert code == 2
    one_error(capsys, str(tmp_path / "run" / "checkpoints"), "cannot write the checkpoint", "File too large")
    assert os.listdir(tmp_path / "run" / "checkpoints") == []


# ----------------------------------------------------------------- weak refusals
@pytest.mark.parametrize("extra, needles", [
    (["--lr", "nan"], ["--lr: got nan"]),
    (["--lr", "-1e-4"], ["--lr: got -0.0001"]),
    (["--bea_enc_block", "99", "--bea_dec_block", "0"], ["--bea_enc_block/--bea_dec_block: got 99/0"]),
    (["--out_dir", "FILE"], ["exists and is not a folder"]),
    (["--out_dir", "/sys/medplug-run"], ["/sys/medplug-run", "not writable"]),
])
def test_weak_refusals_are_one_line(load_script, tiny_cohort, tmp_path, capsys, extra, needles):
    (tmp_path / "file").write_text("keep")
    extra = [str(tmp_path / "file") if a == "FILE" else a for a in extra]
    assert _gd(load_script, "train_bea_dual_loss", ["--data_dir", tiny_cohort, "--out_dir", tmp_path / "r",
                                                    "--max_steps", 1, *BEA_TINY, *extra]) == 2
    one_error(capsys, *needles)
    assert (tmp_path / "file").read_text() == "keep"


def test_negative_values_are_values():
    from plugins.common.flags import make_parser

    args = make_parser("x", {"lr": 1e-4, "value_range": "0,1", "seed": 0}).parse_args(
        ["--lr", "-1e-4", "--value_range", "-1,1", "--seed", "-3"])
    assert (args.lr, args.value_range, args.seed) == (-1e-4, "-1,1", -3)


def test_fpdm_modalities_named(bea_run, load_script, tmp_path, capsys):
    assert run_main(load_script("translation_FPDM_bea_dual_loss").main,
                    ["--model_path", str(bea_run), "--out_dir", str(tmp_path / "o"), "--image_size", "32",
                     "--t_max", "30", "--t_stride", "10", "--fpdm_modalities", "flair,pd"]) == 2
    one_error(capsys, "--fpdm_modalities: got flair,pd")


def test_truncated_pipeline_is_refused(tmp_path, capsys):
    from plugins.backbones import build_backbone
    from plugins.latent_sr.pipeline import SRFlowPipeline, default_scheduler
    from scripts.sample_sr import main
    from tests.test_sr_fixtures import TINY_BACKBONES, tiny_vae, write_pairs
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(tiny_vae(str(tmp_path / "vae")))
    pipe = tmp_path / "pipe"
    SRFlowPipeline(build_backbone("unet", 4, 16, TINY_BACKBONES["unet"]), vae, default_scheduler(), "unit",
                   2).save_pretrained(str(pipe))
    weights = next((pipe / "denoiser").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])
    assert run_main(main, ["--model_path", str(pipe), "--data_dir", write_pairs(str(tmp_path / "data")),
                           "--out_dir", str(tmp_path / "eval")]) == 2
    one_error(capsys, "--model_path", "could not be loaded")
    assert not (tmp_path / "eval").exists()


def test_launch_wrapper_keeps_the_error_contract(load_script, tmp_path, capfd):
    """``accelerate launch``'s own launcher runs the worker; the wrapper exits with the worker's status."""
    code = load_script("launch").main(["--cpu", "--num_processes", "1", "--num_machines", "1", "--mixed_precision",
                                       "no", "--dynamo_backend", "no", os.path.join(REPO, "scripts", "train_sr.py"),
                                       "--backbone", "vit", "--output_dir", str(tmp_path / "r")])
    err = capfd.readouterr().err
    assert code == 2 and error_lines(err) == ["error: --backbone: unknown backbone 'vit'; valid: unet, dit, hybrid"]
    assert "Traceback" not in err and not (tmp_path / "r").exists()
