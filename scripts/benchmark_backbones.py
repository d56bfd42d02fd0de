"""Seed 004's table for our backbones (matched and seed-ratio sets), measured in one run on the same data and VAE.

Two parameter sets: ``--backbone_config`` (matched: every backbone within 10% of the others' parameters, so
the table compares architectures) and ``--seed_ratio_config`` (the seed's ratio, the DiT at 2.5 x the UNet;
empty to skip). For each set and each backbone of ``--backbones``: train ``--train_steps`` with the SR trainer
(same seed, data, VAE, flags; a configuration already trained in the other set is reused: its folder gets
the trained run's ``config.json`` and the same figures), then on the
validation pairs:

- PSNR (mean of per-image PSNR; the data-set PSNR as ``psnr_pooled``), NRMSE, SSIM, MS-SSIM, the bicubic
  reference's under ``reference_bicubic`` (``--num_inference_steps`` Euler steps);
- ``inference_s_per_image``: sampling one batch of validation inputs alone, after every configuration is
  trained: one untimed warm-up call each, then ``--time_rounds`` rounds that call every configuration once
  (order rotated every round, so load on a shared machine hits all alike), median over rounds / batch size;
  each round's figure in ``benchmark/timing/cases.csv`` (one case per round: the rounds pair the backbones);
  ``torch.cuda.synchronize`` around each call on a GPU; data reads, bicubic and metrics outside the timer;
- ``peak_memory_mb``: total peak memory of sampling one batch, weights included (CUDA:
  ``max_memory_allocated`` after a reset; CPU: the peak RSS, ``VmHWM``, of a fresh spawned process that
  loads the pipeline and samples);
- parameters, and the median train step time over ``--time_steps`` steps.

Differences from seed 004's table, deliberate:

| seed 004 | here | why |
|---|---|---|
| DiT at 2.5 x the UNet's parameters | a matched set (within 10%) and a set at the seed's ratio | capacity is otherwise confounded with architecture |
| inference time per sample | the sampling calls alone, warmed up, in interleaved rounds | data reads and metrics are no backbone's cost; load on a shared machine hits every backbone alike |
| memory (total, GPU) | total peak, weights included (GPU peak allocation; CPU fresh-process peak RSS) | the same meaning on either device |
| PSNR (pooling unstated) | mean of per-image PSNR, pooled PSNR beside it | NRMSE is per image too; the case table pairs images |
| UNet, ViT, DiT, Transformer | UNet, DiT, hybrid | the registry's backbones |

Writes ``OUT_DIR/<set>/<backbone>/benchmark/{metrics.json, cases.csv}`` (the training run beside it), prints
one JSON line per row, then the matched table and the seed-ratio table.

Every figure but the inference time is measured once per configuration and kept in
``benchmark/measured.json`` with the flags it was measured under; a later call on the same ``--out_dir`` reuses
it (a call with other flags is refused), and an interrupted training resumes from its latest checkpoint. So
``--train_only`` calls, one per backbone and side by side on several cores, followed by one call with every
backbone that times the sampling alone, give the same table as one call:

    python scripts/benchmark_backbones.py --vae_path RUN_DIR/vae --data_dir data/demo/sr --out_dir runs/backbones
    python scripts/benchmark_backbones.py ... --backbones dit --train_only True &   # one per backbone, then
    python scripts/benchmark_backbones.py ...                                       # time them all, the tables
"""

import json
import os
import shutil
import statistics
import sys
import time

import torch

from plugins.backbones.registry import BACKBONES, check_backbone_name, count_parameters, load_backbone_params
from plugins.common.errors import InputError, run_main
from plugins.common.flags import make_parser
from plugins.common.run_log import CONFIG_FILE, read_case_table, write_case_table, write_json_atomic
from plugins.data.sr_pairs import SRPairDataset
from plugins.latent_sr.evaluate import evaluate_pipeline, load_pipeline, sample_batch, sampling_peak_mb
from plugins.latent_sr.objective import SRFlowObjective
from plugins.latent_sr.trainer import PIPELINE_DIR, all_defaults, train

BENCH_DEFAULTS = dict(vae_path="", data_dir="data/demo/sr", out_dir="runs/backbones", backbones="unet,dit,hybrid",
                      backbone_config="config/sr_backbones.yaml",
                      seed_ratio_config="config/sr_backbones_seed_ratio.yaml", train_steps=200, batch_size=8,
                      lr=1e-4, lr_scheduler="constant_with_warmup", ema_decay=0.999, num_inference_steps=20,
                      time_steps=5, time_rounds=5, max_samples=0,
                      validation_steps=0, seed=0, train_only=False)
BENCH_HELP = dict(
    vae_path="frozen AutoencoderKL folder every backbone trains on",
    data_dir="SR pair folder",
    out_dir="output folder of the runs and tables",
    backbones="comma-separated backbone names to compare",
    backbone_config="YAML of the matched parameter set",
    seed_ratio_config="YAML of the seed-ratio parameter set (empty: skip that set)",
    train_steps="training steps per backbone",
    batch_size="training pairs per step",
    lr="learning rate",
    lr_scheduler="diffusers learning-rate schedule (constant_with_warmup, cosine: to 0 at --train_steps, ...)",
    ema_decay="maximum EMA decay per step of the sampled weights (about 1/(1-decay) steps averaged)",
    num_inference_steps="Euler sampling steps",
    time_steps="training steps timed (median step time)",
    time_rounds="interleaved sampling timing rounds",
    max_samples="score only the first N validation images (0 = all)",
    validation_steps="steps between validation scores while each backbone trains (its val_psnr curve; 0: off)",
    seed="seed of training and sampling, the same for every backbone",
    train_only="train and score the --backbones configurations, then stop; a later call on the same --out_dir "
               "reuses them, times the sampling and writes the tables",
)
SETS = ("matched", "seed_ratio")
METRIC_KEYS = ("psnr", "psnr_pooled", "nrmse", "ssim", "ms_ssim")
MEASURED_FILE = "measured.json"
#: The flags a measurement depends on, kept beside it (with the backbone's parameters) to refuse reusing it
#: under others.
MEASURE_FLAGS = ("vae_path", "data_dir", "train_steps", "batch_size", "lr", "lr_scheduler", "ema_decay",
                 "num_inference_steps", "time_steps", "max_samples", "validation_steps", "seed")
PATH_FLAGS = ("vae_path", "data_dir")  # kept as absolute paths: another working directory names the same files


def train_step_seconds(run_cfg: dict, pipe, dataset, steps: int) -> float:
    """Median wall time of objective + backward + AdamW step on training batches."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = pipe.denoiser.to(device).train()
    vae = pipe.vae.to(device)
    objective = SRFlowObjective(vae, run_cfg, dataset.scale, run_cfg["vae_pixel_range"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=run_cfg["lr"])
    loader = torch.utils.data.DataLoader(dataset, batch_size=run_cfg["batch_size"], shuffle=True, drop_last=True)
    times = []
    batches = iter(loader)
    for i in range(steps + 1):
        try:
            batch = next(batches)
        except StopIteration:
            batches = iter(loader)
            batch = next(batches)
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        start = time.perf_counter()
        loss, _ = objective(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        if i:  # the first step warms up
            times.append(time.perf_counter() - start)
    model.eval()
    return statistics.median(times)


def interleaved_sampling_seconds(pipes: list, low: torch.Tensor, steps: int, rounds: int, seed: int) -> list[list]:
    """Seconds of ``pipe(low)`` per pipeline and round ([pipeline][round]) over ``rounds`` rounds that call each
    once, the order rotated every round, after one untimed warm-up call each."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    times = [[] for _ in pipes]
    for r in range(rounds + 1):
        for i in [(r + k) % len(pipes) for k in range(len(pipes))]:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            sample_batch(pipes[i], low, steps, seed)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if r:  # round 0 warms up
                times[i].append(time.perf_counter() - start)
    return times


def load_on_device(pipeline_dir: str):
    """The saved pipeline, on the GPU when there is one."""
    pipe = load_pipeline(pipeline_dir)
    return pipe.to("cuda") if torch.cuda.is_available() else pipe


def measure(args, name: str, config: str, run_dir: str, val, train_set) -> tuple[dict, list[dict], object]:
    """Train ``name`` from ``config`` into ``run_dir`` and measure all but the inference time:
    (row, per-image case rows, the loaded pipeline)."""
    cfg = all_defaults({
        "data_dir": args.data_dir, "out_dir": run_dir, "vae_path": args.vae_path, "backbone": name,
        "backbone_config": config, "max_steps": args.train_steps, "batch_size": args.batch_size, "lr": args.lr,
        "lr_scheduler": args.lr_scheduler, "ema_decay": args.ema_decay, "seed": args.seed,
        "checkpointing_steps": args.train_steps, "report_to": "", "resume_checkpoint": "latest",
        "validation_steps": args.validation_steps, "validation_inference_steps": args.num_inference_steps})
    result = train(cfg)
    pipe = load_on_device(result["pipeline_dir"])
    scores, cases, _ = evaluate_pipeline(pipe, val, args.num_inference_steps, args.batch_size, args.seed,
                                         args.max_samples)
    low = torch.stack([val[i]["lr"] for i in range(min(args.batch_size, len(val)))])
    row = {"backbone": name, **{k: scores[k] for k in METRIC_KEYS},
           "params_m": count_parameters(pipe.denoiser) / 1e6,
           "peak_memory_mb": sampling_peak_mb(pipe, result["pipeline_dir"], low, args.num_inference_steps, args.seed),
           "train_step_s": train_step_seconds(cfg, pipe, train_set, args.time_steps),
           "reference_bicubic": scores["reference_bicubic"], "train_steps": args.train_steps,
           "num_images": scores["num_images"], "run_dir": run_dir,
           "device": "cuda" if torch.cuda.is_available() else "cpu"}
    return row, cases, pipe


def measured_once(args, name: str, config: str, params: dict, run_dir: str, val, train_set) -> tuple:
    """:func:`measure` unless ``run_dir/benchmark/measured.json`` holds its figures under the same flags and
    parameters (an earlier call, ``--train_only`` or interrupted after scoring); kept there for the next call."""
    path = os.path.join(run_dir, "benchmark", MEASURED_FILE)
    flags = {**{k: os.path.abspath(getattr(args, k)) if k in PATH_FLAGS else getattr(args, k) for k in MEASURE_FLAGS},
             "params": params}
    cases_path = os.path.join(run_dir, "benchmark", "cases.csv")
    if os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
        differ = [f"{k} {saved['flags'].get(k)!r} -> {v!r}" for k, v in flags.items() if saved["flags"].get(k) != v]
        if differ:
            raise InputError(f"{path}: measured under other flags ({'; '.join(differ)}); choose another --out_dir")
        return saved["row"], read_case_table(cases_path), load_on_device(os.path.join(run_dir, PIPELINE_DIR))
    row, cases, pipe = measure(args, name, config, run_dir, val, train_set)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_case_table(cases_path, cases)
    write_json_atomic(path, {"flags": flags, "row": row}, indent=2)
    return row, cases, pipe


def print_table(title: str, rows: list[dict]) -> None:
    print(f"\n{title}")
    print("| backbone | params (M) | PSNR | PSNR pooled | NRMSE | MS-SSIM | inference (s/image) | peak memory (MB) | "
          "train step (s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['backbone']} | {r['params_m']:.2f} | {r['psnr']:.2f} | {r['psnr_pooled']:.2f} | {r['nrmse']:.4f} | "
              f"{r['ms_ssim']:.4f} | {r['inference_s_per_image']:.4f} | {r['peak_memory_mb']:.0f} | "
              f"{r['train_step_s']:.3f} |")
    bic = rows[0]["reference_bicubic"]
    print(f"(bicubic PSNR {bic['psnr']:.2f}, NRMSE {bic['nrmse']:.4f}, MS-SSIM {bic['ms_ssim']:.4f}; "
          f"{rows[0]['train_steps']} training steps each, {rows[0]['num_images']} validation pairs, "
          f"{rows[0]['device']})")


def main(argv=None):
    args = make_parser(__doc__.splitlines()[0], BENCH_DEFAULTS, phrases=(BENCH_HELP,)).parse_args(argv)
    names = [check_backbone_name(n.strip()) for n in args.backbones.split(",") if n.strip()]
    if not names:
        raise InputError(f"--backbones: expected a comma-separated subset of {', '.join(BACKBONES)}")
    if min(args.train_steps, args.time_steps, args.time_rounds, args.num_inference_steps, args.batch_size) < 1:
        raise InputError("--train_steps, --time_steps, --time_rounds, --num_inference_steps and --batch_size: "
                         "expected positive integers")
    if args.validation_steps < 0:
        raise InputError(f"--validation_steps: expected an integer >= 0, got {args.validation_steps}")
    configs = {"matched": args.backbone_config, "seed_ratio": args.seed_ratio_config}
    configs = {s: path for s, path in configs.items() if path}
    flags = {"matched": "--backbone_config", "seed_ratio": "--seed_ratio_config"}
    params = {(s, n): load_backbone_params(path, n, flags[s]) for s, path in configs.items() for n in names}
    val = SRPairDataset(args.data_dir, "val")
    train_set = SRPairDataset(args.data_dir, "train")
    keys = {k: (k[1], json.dumps(p, sort_keys=True)) for k, p in params.items()}  # one run per configuration
    measured = {}
    for (set_name, name), key in keys.items():
        if key not in measured:
            measured[key] = measured_once(args, name, configs[set_name], params[set_name, name],
                                          os.path.join(args.out_dir, set_name, name), val, train_set)
    if args.train_only:
        for row, _, _ in measured.values():
            print(json.dumps(row), flush=True)
        return
    low = torch.stack([val[i]["lr"] for i in range(min(args.batch_size, len(val)))])
    seconds = interleaved_sampling_seconds([pipe for _, _, pipe in measured.values()], low,
                                           args.num_inference_steps, args.time_rounds, args.seed)
    per_image = {key: [t / low.shape[0] for t in rounds] for key, rounds in zip(measured, seconds)}
    tables = {s: [] for s in configs}
    for (set_name, name), key in keys.items():
        folder = os.path.join(args.out_dir, set_name, name)
        row, cases, _ = measured[key]
        row = {**row, "inference_s_per_image": statistics.median(per_image[key]), "time_rounds": args.time_rounds,
               "set": set_name}
        os.makedirs(os.path.join(folder, "benchmark", "timing"), exist_ok=True)
        if row["run_dir"] != folder:  # reused: the trained run's configuration and cases beside its figures
            shutil.copyfile(os.path.join(row["run_dir"], CONFIG_FILE), os.path.join(folder, CONFIG_FILE))
            write_case_table(os.path.join(folder, "benchmark", "cases.csv"), cases)
        write_case_table(os.path.join(folder, "benchmark", "timing", "cases.csv"),
                         [{"case": f"round{r + 1}", "inference_s_per_image": t} for r, t in enumerate(per_image[key])])
        write_json_atomic(os.path.join(folder, "benchmark", "metrics.json"), row, indent=2)
        print(json.dumps(row), flush=True)
        tables[set_name].append(row)
    titles = {"matched": f"Matched parameters ({configs.get('matched')})",
              "seed_ratio": f"Seed 004's ratio, DiT at 2.5 x the UNet ({configs.get('seed_ratio')})"}
    for set_name, rows in tables.items():
        print_table(titles[set_name], rows)


if __name__ == "__main__":
    sys.exit(run_main(main))
