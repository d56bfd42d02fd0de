"""The five comparisons of the seeds' claims, each run through the project's own scripts.

Every comparison knows its variants (the first is the report's baseline), the claim and its checks
(:mod:`plugins.reproduce.claims`), and ``plan(ctx)``: the :class:`Job`s that build its run
directories for each seed (training, then evaluation into the run directory) and
``{variant: [run dir per seed]}``. Run directories live in ``ROOT/runs/<comparison>/<variant>_s<seed>``.
Three scales (:data:`SCALES`): ``quick`` (tiny models, few steps: minutes on a 2-core CPU; the pipelines run
end to end and learn nothing), ``cpu`` (the smallest sizes and step counts where each baseline passes its
competence gate on the embedded data: each comparison alone about an hour at most on 2 cores) and ``default``
(the seeds' model sizes, thousands of steps: meant for a GPU).
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, field

import yaml

from plugins.backbones.registry import TINY_BACKBONES, TINY_SEED_RATIO_BACKBONES
from plugins.common.errors import InputError
from plugins.reproduce.claims import Check, Gate, Reported
from plugins.reproduce.jobs import Job

#: Each scale's description (the reports' scale line) and its default number of seeds per variant.
SCALES = {"quick": "tiny models, few steps, minutes on a 2-core CPU; the pipelines run end to end, the numbers "
                   "say nothing of the methods' merit",
          "cpu": "the smallest models and step counts found where each baseline is competent on the embedded data, "
                 "each comparison alone about an hour at most on 2 cores (one thread per step, steps side by side)",
          "default": "the seeds' model sizes, thousands of steps (GPU)"}
DEFAULT_SEEDS = {"quick": 2, "cpu": 3, "default": 3}
GUIDED_TINY = ["--image_size", "32", "--num_channels", "32", "--num_res_blocks", "1", "--attention_resolutions", "8",
               "--num_heads", "1", "--diffusion_steps", "100"]
AE_TINY = ["--autoencoder.num_channels", "[8, 16]", "--autoencoder.attention_levels", "[false, false]",
           "--autoencoder.norm_num_groups", "4", "--autoencoder.latent_channels", "4",
           "--autoencoder.training.use_gradient_checkpointing", "false", "--autoencoder.training.learning_rate", "1e-3",
           "--autoencoder.training.disc_num_layers", "2"]  # 16^3 crops: a 3-layer patch discriminator ends at 1 voxel

#: Flags per comparison and scale (lists are passed to the scripts as they are).
SETTINGS = {
    "quick": {
        "bea_train": [*GUIDED_TINY, "--batch_size", "8", "--max_steps", "40", "--log_interval", "5",
                      "--save_interval", "20", "--lr", "3e-4"],
        # the raw weights: after 40 steps an EMA of rate 0.9999 is still the initialisation
        "bea_fpdm": ["--image_size", "32", "--t_max", "40", "--t_stride", "10",
                     "--batch_size", "24", "--slice_step", "3", "--use_ema", "False"],
        "ae_train": [*AE_TINY, "--max_steps", "40", "--data.crop_size", "[16, 16, 16]",
                     "--autoencoder.training.val_interval", "3", "--autoencoder.training.save_interval", "3",
                     "--autoencoder.training.n_epochs", "1000"],
        # 4 of the 10 demo subjects in validation, so both grades are there and the AUC is defined
        "seg_train": [*GUIDED_TINY, "--modalities", "flair,t2", "--batch_size", "24", "--log_interval", "5",
                      "--val_fraction", "0.4", "--val_num_ensemble", "1", "--val_timestep_respacing", "ddim10"],
        "seg_stage_steps": [12, 5, 8],  # seg-only and joint run the sum (just over one epoch of the demo cohort)
        "seg_stage_lr": {},  # stage -> its --lr (the stage trains at that x its factor); absent: seg_train's
        "seg_sample": None,  # the runs' own validation only (sampled masks, 1 DDIM sample of 10 steps a slice)
        "bea_subjects": 0, "seg_subjects": 0,  # the embedded cohort
        "max_seeds": {"segmentation": 1},  # one epoch per variant is the CPU budget: the verdict stays inconclusive
        "vae_train": [*AE_TINY, "--autoencoder.num_channels", "[16, 32]", "--autoencoder.norm_num_groups", "8",
                      "--max_steps", "30", "--autoencoder.training.batch_size", "8",
                      "--autoencoder.training.val_interval", "100", "--autoencoder.training.save_interval", "100"],
        # the raw weights: after 40 steps an EMA is still mostly the initialisation
        "sr_train": ["--config", "config/sr_demo.yaml", "--max_steps", "40", "--batch_size", "8",
                     "--checkpointing_steps", "20", "--log_every", "5", "--lr_warmup_steps", "5",
                     "--use_ema", "False"],
        "sr_sample": ["--num_inference_steps", "10", "--max_samples", "16"],
        "backbones": ["--backbones", "unet,dit,hybrid", "--train_steps", "30", "--num_inference_steps", "10",
                      "--max_samples", "16", "--time_steps", "3", "--batch_size", "8", "--lr", "2e-4"],
        "tiny_backbones": True,
    },
    # tuned and measured on a 2-core CPU (README "The cpu scale, measured"): every baseline passes its gates
    "cpu": {
        # EMA (0.9999 with warm-up) and 3000 steps: the raw weights localise lesions but call every slice healthy,
        # and at 2500 steps the MSE-only arm's image accuracy is below its gate (0.725 over 3 seeds on the embedded
        # cohort; on the 60-subject cohort 0.822, but one seed at 0.737); val_mse every second epoch (402 steps each
        # on the 60-subject cohort)
        # channels_last weights here and in seg_train: 1.24-1.26 x the step rate with two trainings at once on an idle
        # Intel Xeon (bench_cpu.py --side_by_side 2), within noise on the shared machine of the README's table
        "bea_train": [*GUIDED_TINY, "--batch_size", "8", "--lr", "3e-4", "--max_steps", "3000", "--log_interval", "50",
                      "--save_interval", "500", "--val_loss_interval", "2", "--channels_last", "True"],
        # t_max: 60 of the 100 steps, stride 2 (the same figures as stride 1 at half the time); every 4th slice of
        # the 6 tuning and 6 test subjects (about 100 slices each: the time of every slice of one subject)
        "bea_fpdm": ["--image_size", "32", "--batch_size", "32", "--slice_step", "4", "--t_stride", "2"],
        # lr 1e-3 over 600 steps swung the foreground Dice between 0.12 and 0.84 from one validation to the next
        "ae_train": [*AE_TINY, "--autoencoder.num_channels", "[16, 32]", "--autoencoder.norm_num_groups", "8",
                     "--autoencoder.training.learning_rate", "5e-4", "--max_steps", "900",
                     "--data.crop_size", "[16, 16, 16]",
                     "--autoencoder.training.val_interval", "25", "--autoencoder.training.save_interval", "25",
                     "--autoencoder.training.n_epochs", "10000"],
        # the clean mask predicted (the noise-predicting model's sampled Dice stayed at 0.006 over 180 steps), lr
        # decayed over 700 steps in every run (seg-only and joint reach 0; the staged runs start each stage at
        # step 0 and end at 4/7, 4/7 and 6/7 of their stage's rate), validation every 2nd epoch, 1 DDIM-5 sample
        "seg_train": [*GUIDED_TINY, "--predict_xstart", "True", "--modalities", "t1,t1ce,t2,flair", "--batch_size", "8",
                      "--lr", "1e-3", "--lr_anneal_steps", "700", "--log_interval", "25", "--val_fraction", "0.4",
                      "--val_num_ensemble", "1", "--val_timestep_respacing", "ddim5", "--val_interval", "2",
                      "--channels_last", "True"],
        "seg_stage_steps": [300, 300, 100],
        # stage 2 at the seed's head rate 1e-3 (--lr 1e-4 x 10): at 1e-3 x 10 every ReLU unit of the head died
        # and its output was constant (README, seed 002)
        "seg_stage_lr": {2: "1e-4"},
        "seg_sample": None,
        # the 60-subject cohort for both: BEA's 12 validation subjects give FPDM 6 test subjects (the embedded cohort's
        # one test subject, with the smallest lesions, put the image accuracy within a slice of the all-healthy
        # call's); segmentation's 12 LGG, 5 of them among the 24 validation subjects, give the head's AUC an interval
        "bea_subjects": 60, "seg_subjects": 60,
        # BEA's pooled AUPRC needs 3 seeds for an interval, and segmentation's Dice margin 3 for one that covers
        # seeds; the others' intervals resample cases, so fewer seeds keep each comparison to about an hour on 2 cores;
        # BEA's plain arm is in no check or gate (reported beside them): one seed, 7 trainings instead of 9
        "max_seeds": {"autoencoder": 2, "segmentation": 3, "sr": 2, "backbones": 1, "bea/plain": 1},
        # a VAE whose own reconstruction clears bicubic by 3 dB, and SR denoisers that learn past bicubic
        "vae_train": [*AE_TINY, "--autoencoder.num_channels", "[16, 32]", "--autoencoder.norm_num_groups", "8",
                      "--max_steps", "1500", "--autoencoder.training.batch_size", "8",
                      "--autoencoder.training.val_interval", "10", "--autoencoder.training.save_interval", "100"],
        "sr_train": ["--config", "config/sr_demo.yaml", "--max_steps", "1000", "--batch_size", "16", "--lr", "1e-3",
                     "--lr_warmup_steps", "50", "--checkpointing_steps", "250", "--log_every", "25",
                     "--validation_steps", "250"],
        "sr_sample": ["--num_inference_steps", "10"],
        # the tiny DiT needs the higher rate and the steps: at lr 1e-3 it stayed 0.3 dB below bicubic after 2000
        "backbones": ["--backbones", "unet,dit,hybrid", "--train_steps", "3000", "--batch_size", "16", "--lr", "3e-3",
                      "--num_inference_steps", "10", "--time_steps", "3", "--time_rounds", "5",
                      "--validation_steps", "500"],
        "tiny_backbones": True,
    },
    "default": {
        "bea_train": ["--max_steps", "5000", "--log_interval", "50", "--save_interval", "1000"],
        "bea_fpdm": [],
        "ae_train": ["--max_steps", "3000", "--autoencoder.training.perceptual_weight", "0"],
        "seg_train": ["--image_size", "128", "--log_interval", "50"],
        "seg_stage_steps": [2000, 1000, 1000],
        "seg_stage_lr": {},
        "bea_subjects": 0, "seg_subjects": 0,  # the embedded cohort (point --data_dir at BraTS for the real one)
        "max_seeds": {},
        "seg_sample": ["--num_ensemble", "5", "--timestep_respacing", "ddim50"],
        "vae_train": ["--autoencoder.spatial_dims", "2", "--autoencoder.num_channels", "[64, 128]",
                      "--autoencoder.attention_levels", "[false, false]", "--max_steps", "3000",
                      "--autoencoder.training.batch_size", "16"],
        "sr_train": ["--config", "config/sr_demo.yaml", "--max_steps", "3000", "--checkpointing_steps", "500",
                     "--validation_steps", "500"],
        "sr_sample": ["--num_inference_steps", "20"],
        "backbones": ["--backbones", "unet,dit,hybrid", "--train_steps", "2000", "--validation_steps", "500"],
        "tiny_backbones": False,
    },
}


def parse_extra_flags(values: list[str], scale: str) -> dict:
    """``["SETTING=FLAGS", ...]`` -> ``{SETTING: shlex.split(FLAGS)}`` for the scale's flag lists (a setting named
    twice gets both); refuses other settings with one line."""
    lists = sorted(key for key, value in SETTINGS[scale].items()
                   if isinstance(value, list) and all(isinstance(flag, str) for flag in value))
    extra = {}
    for value in values:
        key, sep, flags = value.partition("=")
        try:
            split = shlex.split(flags)
        except ValueError as err:  # an unclosed quote
            raise InputError(f"--extra_flags: got {value!r}; its FLAGS do not split as a shell would: {err}") from err
        if not sep or key not in lists or not split:
            raise InputError(f"--extra_flags: got {value!r}; expected SETTING=FLAGS with SETTING one of the "
                             f"{scale} scale's flag lists ({', '.join(lists)})")
        extra[key] = [*extra.get(key, []), *split]
    return extra


@dataclass
class Context:
    root: str  # the reproduction folder: runs/, logs/, done/, one report folder per comparison
    data_dir: str  # the embedded data: brats/, filaments/, sr/
    scale: str
    seeds: list = field(default_factory=lambda: [0])
    overrides: dict = field(default_factory=dict)  # SETTINGS entries replaced (e.g. by tests)
    extra_flags: dict = field(default_factory=dict)  # {setting: [flag, ...]} appended to the scale's (--extra_flags)

    @property
    def settings(self) -> dict:
        settings = {**SETTINGS[self.scale], **self.overrides}
        return {**settings, **{key: [*settings[key], *flags] for key, flags in self.extra_flags.items()}}

    def seeds_of(self, comparison: str, variant: str | None = None) -> list:
        """The seeds ``comparison`` (its ``variant``) runs: the first ``max_seeds["<comparison>/<variant>"]``, else
        ``max_seeds["<comparison>"]`` of the scale (all when it names neither)."""
        caps = self.settings["max_seeds"]
        return self.seeds[:caps.get(f"{comparison}/{variant}", caps.get(comparison))]

    def run_dir(self, comparison: str, variant: str, seed: int) -> str:
        return os.path.join(self.root, "runs", comparison, f"{variant}_s{seed}")


@dataclass
class Comparison:
    key: str
    title: str
    claim: str
    variants: list
    gates: list  # the baseline's competence gates (claims.Gate)
    reported: list  # figures shown beside the gates, not gating (claims.Reported)
    checks: list
    plan: object  # (ctx) -> (jobs, {variant: [run dirs]})
    curves: tuple = ()  # the validation curves (logged keys) the index page shows for every arm


def _bea_plan(ctx: Context):
    variants = {"bea_mse": ["--boundary_loss_weight", "0"],
                "plain": ["--use_bea", "False", "--boundary_loss_weight", "0"], "bea_dual": []}
    data_jobs, brats = cohort(ctx, "bea_subjects")
    built = tuple(job.name for job in data_jobs)
    cache = os.path.join(ctx.root, "cache", f"brats_{ctx.scale}")
    jobs, groups = list(data_jobs), {v: [] for v in variants}
    for seed in ctx.seeds_of("bea"):
        for variant, flags in variants.items():
            if seed not in ctx.seeds_of("bea", variant):
                continue
            run = ctx.run_dir("bea", variant, seed)
            groups[variant].append(run)
            jobs.append(Job(f"bea/{variant}_s{seed}/train", "train_bea_dual_loss", [
                "--data_dir", brats, "--out_dir", run, "--seed", seed,
                "--cache_dir", cache, "--resume_checkpoint", "latest", *ctx.settings["bea_train"], *flags],
                after=built))
            jobs.append(Job(f"bea/{variant}_s{seed}/fpdm", "translation_FPDM_bea_dual_loss", [
                "--model_path", run, "--data_dir", brats,
                "--out_dir", os.path.join(run, "fpdm"), "--seed", seed, *ctx.settings["bea_fpdm"]],
                after=(jobs[-1].name,)))
    return jobs, groups


def _ae_plan(ctx: Context):
    jobs, groups = [], {"l1": [], "weighted": [], "combined": []}
    for seed in ctx.seeds_of("autoencoder"):
        for variant in groups:
            run = ctx.run_dir("autoencoder", variant, seed)
            groups[variant].append(run)
            jobs.append(Job(f"autoencoder/{variant}_s{seed}/train", "train_autoencoder", [
                "--config", "config/ldm_config_local.yaml", "--data_dir", os.path.join(ctx.data_dir, "filaments"),
                "--out_dir", run, "--seed", seed, "--resume_checkpoint", "latest",
                "--autoencoder.training.perceptual_weight", "0",
                "--autoencoder.training.loss.reconstruction_loss_type", variant, *ctx.settings["ae_train"]]))
    return jobs, groups


def cohort(ctx: Context, setting: str) -> tuple[list[Job], str]:
    """The job building the cohort that ``ctx.settings[setting]`` (N subjects) names, none for the embedded one
    (N = 0), and its BraTS folder. A cohort of N subjects from the same generator is built once into
    ``ROOT/data/cohort_N``, shared by every comparison that names the same N (the embedded 10 subjects hold 2 LGG,
    too few to train and test an HGG/LGG classifier, and 2 validation subjects, one to test FPDM on)."""
    n = ctx.settings[setting]
    if not n:
        return [], os.path.join(ctx.data_dir, "brats")
    out = os.path.join(ctx.root, "data", f"cohort_{n}")
    job = Job(f"data/cohort_{n}", "make_demo_data", ["--kind", "brats", "--num_subjects", n, "--out_dir", out])
    return [job], os.path.join(out, "brats")


def _seg_plan(ctx: Context):
    data_jobs, brats = cohort(ctx, "seg_subjects")
    built = tuple(job.name for job in data_jobs)
    csv = os.path.join(brats, "name_mapping.csv")
    stages = ctx.settings["seg_stage_steps"]
    total = sum(stages)
    # every variant reads the grades: the same stratified split of the same subjects
    common = ["--data_dir", brats, "--csv_path", csv,
              "--cache_dir", os.path.join(ctx.root, "cache", f"seg_{ctx.scale}"), *ctx.settings["seg_train"]]
    jobs, groups = list(data_jobs), {"seg_only": [], "joint": [], "staged": []}
    for seed in ctx.seeds_of("segmentation"):
        runs = {v: ctx.run_dir("segmentation", v, seed) for v in groups}
        last = {"seg_only": total, "joint": total, "staged": stages[-1]}
        for variant, flags in (("seg_only", ["--use_cls_head", "False"]), ("joint", [])):
            jobs.append(Job(f"segmentation/{variant}_s{seed}/train", "segmentation_train", [
                *common, "--seed", seed, *flags, "--out_dir", runs[variant], "--resume_checkpoint", "latest",
                "--max_steps", total, "--save_interval", total], after=built))
        previous = None
        for stage, steps in enumerate(stages, 1):  # each stage starts at step 0 from the previous one's weights
            out = runs["staged"] if stage == len(stages) else f"{runs['staged']}_stage{stage}"
            extra = ["--use_cls_head", "False"] if stage == 1 else ["--resume_checkpoint", previous]
            if stage in ctx.settings["seg_stage_lr"]:
                extra += ["--lr", ctx.settings["seg_stage_lr"][stage]]
            jobs.append(Job(f"segmentation/staged_s{seed}/stage{stage}", "segmentation_train_staged", [
                *common, "--seed", seed, "--stage", stage, "--out_dir", out, *extra, "--max_steps", steps,
                "--save_interval", steps], after=(jobs[-1].name,) if stage > 1 else built))
            previous = out
        trained = {"seg_only": f"segmentation/seg_only_s{seed}/train", "joint": f"segmentation/joint_s{seed}/train",
                   "staged": jobs[-1].name}
        for variant, run in runs.items():
            groups[variant].append(run)
            if ctx.settings["seg_sample"] is not None:
                jobs.append(Job(f"segmentation/{variant}_s{seed}/sample", "segmentation_sample_v2", [
                    "--model_path", os.path.join(run, f"model{last[variant]:06d}.pt"), "--data_dir", brats,
                    "--out_dir", os.path.join(run, "eval"), "--seed", seed, *ctx.settings["seg_sample"]],
                    after=(trained[variant],)))
    return jobs, groups


def vae_job(ctx: Context) -> tuple[Job, str]:
    """The 2D AutoencoderKL that the SR runs and the backbone benchmark share (trained once, seed 0)."""
    run = os.path.join(ctx.root, "runs", "sr_vae")
    job = Job("sr/vae/train", "train_autoencoder", [
        "--config", "config/ldm_config_local.yaml", "--data_dir", os.path.join(ctx.data_dir, "sr", "train", "hr"),
        "--out_dir", run, "--seed", 0, "--resume_checkpoint", "latest", "--autoencoder.spatial_dims", "2",
        "--autoencoder.training.perceptual_weight", "0", "--autoencoder.training.denoising.enabled", "false",
        "--autoencoder.training.loss.reconstruction_loss_type", "l1", *ctx.settings["vae_train"]])
    return job, os.path.join(run, "vae")


def backbone_config(ctx: Context, seed_ratio: bool = False) -> str:
    """The matched (or seed-ratio) backbone YAML of the scale: the config file, or the tiny set written out."""
    if not ctx.settings["tiny_backbones"]:
        return "config/sr_backbones_seed_ratio.yaml" if seed_ratio else "config/sr_backbones.yaml"
    path = os.path.join(ctx.root, "tiny_backbones_seed_ratio.yaml" if seed_ratio else "tiny_backbones.yaml")
    os.makedirs(ctx.root, exist_ok=True)
    with open(path, "w") as f:
        yaml.safe_dump(TINY_SEED_RATIO_BACKBONES if seed_ratio else TINY_BACKBONES, f)
    return path


def _sr_plan(ctx: Context):
    vae, vae_path = vae_job(ctx)
    sr = os.path.join(ctx.data_dir, "sr")
    jobs, groups = [vae], {"diffusion_only": [], "pixel_loss": []}
    scripts = {"diffusion_only": "train_sr", "pixel_loss": "train_sr_pixel"}
    for seed in ctx.seeds_of("sr"):
        for variant, script in scripts.items():
            run = ctx.run_dir("sr", variant, seed)
            groups[variant].append(run)
            jobs.append(Job(f"sr/{variant}_s{seed}/train", script, [
                *ctx.settings["sr_train"], "--data_dir", sr, "--vae_path", vae_path, "--out_dir", run,
                "--seed", seed, "--backbone_config", backbone_config(ctx), "--resume_checkpoint", "latest"],
                after=(vae.name,)))
            jobs.append(Job(f"sr/{variant}_s{seed}/sample", "sample_sr", [
                "--model_path", run, "--data_dir", sr, "--out_dir", os.path.join(run, "eval"), "--seed", seed,
                *ctx.settings["sr_sample"]], after=(jobs[-1].name,)))
    return jobs, groups


def _backbone_plan(ctx: Context):
    """One ``--train_only`` step per backbone (side by side: they train and score into the same folder), then the
    benchmark step that reuses their figures, times the sampling alone and writes
    ``out/<set>/<backbone>/benchmark/{metrics.json, cases.csv}`` (sets: matched, seed_ratio)."""
    vae, vae_path = vae_job(ctx)
    flags = ctx.settings["backbones"]
    names = flags[flags.index("--backbones") + 1].split(",")
    jobs, groups = [vae], {**{n: [] for n in names}, **{f"{n}_seed_ratio": [] for n in names}}
    for seed in ctx.seeds_of("backbones"):
        out = os.path.join(ctx.root, "runs", "backbones", f"s{seed}")
        args = ["--vae_path", vae_path, "--data_dir", os.path.join(ctx.data_dir, "sr"), "--out_dir", out,
                "--seed", seed, "--backbone_config", backbone_config(ctx),
                "--seed_ratio_config", backbone_config(ctx, seed_ratio=True), *flags]
        trained = [Job(f"backbones/s{seed}/{name}/train", "benchmark_backbones",
                       [*args, "--backbones", name, "--train_only", "True"], after=(vae.name,)) for name in names]
        jobs += [*trained, Job(f"backbones/s{seed}/benchmark", "benchmark_backbones", args,
                               after=tuple(job.name for job in trained))]
        for name in names:
            groups[name].append(os.path.join(out, "matched", name))
            groups[f"{name}_seed_ratio"].append(os.path.join(out, "seed_ratio", name))
    return jobs, groups


COMPARISONS = {c.key: c for c in [
    Comparison("bea", "Seed 000: BEA dual loss vs MSE-only (FPDM anomaly maps)",
               "The boundary-aware dual loss raises FPDM pixel AUPRC over the BEA MSE-only baseline.",
               ["bea_mse", "plain", "bea_dual"],  # the report's baseline: the claim's
               [Gate("bea_mse", "fpdm/mixed.auprc", "fpdm/reference_random_auprc", factor=5.0,
                     label="the random map's AUPRC (the lesion prevalence in the brain)"),
                Gate("bea_mse", "fpdm/mixed.auprc", reference=0.3),
                Gate("bea_mse", "fpdm/mixed.image_accuracy", reference=0.75),
                Gate("bea_mse", "fpdm/mixed.image_accuracy", "fpdm/reference_all_healthy_accuracy",
                     label="the all-healthy call's accuracy (the healthy share of the test slices)")],
               [Reported("bea_mse", "fpdm/mixed.image_recall", "image recall (tumour slices called unhealthy)"),
                Reported("bea_mse", "fpdm/reference_flair.mixed.auprc", "FLAIR thresholding's AUPRC"),
                Reported("bea_mse", "fpdm/reference_flair.mixed.image_accuracy",
                         "FLAIR thresholding's image accuracy")],
               [Check("fpdm/mixed.auprc", "bea_dual", "bea_mse", min_effect=0.005),
                Check("fpdm/unhealthy.auprc", "bea_dual", "bea_mse", min_effect=0.005)],
               _bea_plan, curves=("val_mse",)),
    Comparison("autoencoder", "Seed 001: autoencoder reconstruction losses on sparse volumes",
               "Weighted and combined reconstruction losses stop all-black reconstructions: higher foreground "
               "Dice than l1, with a predicted/true foreground volume ratio within [0.5, 2] (not over-painted).",
               ["l1", "weighted", "combined"],
               [Gate("weighted", "eval/fg_dice", reference=0.5),
                Gate("weighted", "eval/fg_volume_ratio", reference=0.5),
                Gate("weighted", "eval/fg_volume_ratio", reference=2.0, direction="lower")],
               [*(Reported(arm, "eval/psnr", f"{arm} reconstruction PSNR (dB)") for arm in ("l1", "weighted")),
                Reported("l1", "eval/reference_black.psnr", "the all-black reconstruction's PSNR (dB)")],
               [Check("eval/case.fg_dice", "weighted", "l1", min_effect=0.01),
                Check("eval/case.fg_dice", "combined", "l1", min_effect=0.01),
                *(Check("eval/case.fg_volume_ratio", v, None, direction=d, reference=r)
                  for v in ("weighted", "combined") for d, r in (("higher", 0.5), ("lower", 2.0)))],
               _ae_plan, curves=("val_psnr", "val_fg_dice", "val_fg_volume_ratio")),
    Comparison("segmentation", "Seed 002: segmentation-only vs joint vs staged training",
               "Staged training keeps the segmentation Dice of segmentation-only training (within 0.02) while "
               "adding a classifier better than chance (AUC > 0.5).",
               ["seg_only", "joint", "staged"],
               # validation/: the end-of-run validation; case.dice = each subject's volume Dice of the sampled masks
               [Gate("seg_only", "validation/case.dice", reference=0.7),
                Gate("seg_only", "validation/case.dice", "validation/case.reference_flair",
                     label="FLAIR thresholding's Dice")],
               [],
               [Check("validation/case.dice", "staged", "seg_only", margin=0.02),
                # the seed's subject-level AUC (a subject's HGG probability: the mean of its slices')
                Check("validation/case.hgg_prob", "staged", None, reference=0.5, min_effect=0.05,
                      labels="validation/case.grade")],
               _seg_plan, curves=("dice",)),
    Comparison("sr", "Seed 003: SR diffusion-only vs the pixel-space loss branch",
               "The pixel-space loss raises PSNR and SSIM of latent rectified-flow SR.",
               ["diffusion_only", "pixel_loss"],
               [Gate("diffusion_only", "eval/reference_vae.psnr", "eval/reference_bicubic.psnr", margin=3.0,
                     label="bicubic PSNR"),
                Gate("diffusion_only", "eval/psnr", "eval/reference_bicubic.psnr", label="bicubic PSNR")],
               [Reported("diffusion_only", "eval/ssim", "SSIM"),
                Reported("diffusion_only", "eval/reference_bicubic.ssim", "bicubic SSIM")],
               [Check("eval/case.psnr", "pixel_loss", "diffusion_only", min_effect=0.1),
                Check("eval/case.ssim", "pixel_loss", "diffusion_only", min_effect=0.005)],
               _sr_plan, curves=("val_psnr", "val_ssim")),
    Comparison("backbones", "Seed 004: denoiser backbones (UNet, DiT, hybrid)",
               "The UNet matches the DiT (PSNR within 0.5 dB) at a fraction of its cost: at the seed's ratio "
               "(DiT 2.5 x the UNet's parameters) with fewer parameters and faster inference; at matched "
               "parameters, PSNR within 0.5 dB and faster inference.",
               ["unet", "dit", "hybrid", "unet_seed_ratio", "dit_seed_ratio", "hybrid_seed_ratio"],
               [Gate(arm, "benchmark/psnr", "benchmark/reference_bicubic.psnr", label="bicubic PSNR")
                for arm in ("unet", "dit", "hybrid", "unet_seed_ratio", "dit_seed_ratio", "hybrid_seed_ratio")],
               [],
               # timing/: one case per interleaved timing round (a round times every backbone once); the check
               # compares the rounds' means, metrics.json reports their median
               [Check("benchmark/case.psnr", "unet_seed_ratio", "dit_seed_ratio", margin=0.5),
                Check("benchmark/params_m", "unet_seed_ratio", "dit_seed_ratio", direction="lower", exact=True),
                Check("benchmark/timing/case.inference_s_per_image", "unet_seed_ratio", "dit_seed_ratio",
                      direction="lower", unit="timing rounds"),
                Check("benchmark/case.psnr", "unet", "dit", margin=0.5),
                Check("benchmark/timing/case.inference_s_per_image", "unet", "dit", direction="lower",
                      unit="timing rounds")],
               _backbone_plan, curves=("val_psnr",)),
]}
