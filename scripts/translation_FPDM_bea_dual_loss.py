"""FPDM anomaly maps of a classifier-free guided (BEA) model on BraTS slices, tuned and scored as AnoFPDM does.

    python scripts/translation_FPDM_bea_dual_loss.py --model_path runs/bea_dual --out_dir runs/bea_dual/fpdm

Reads the model configuration saved with the checkpoint (model flags are accepted and must agree),
tunes M_max / the image-level cut / the FLAIR reference's threshold on half of the validation
subjects (slice labels only, w fixed), scores the other half, and writes maps.npz, metrics.json
(FPDM, the FLAIR reference and the random-map AUPRC), metrics.csv, cases.csv and grid.png to
--out_dir (default MODEL_RUN/fpdm). See plugins/bea/fpdm.py and plugins/bea/evaluation.py.
"""

import json
import os
import sys

import torch

from plugins.bea.evaluation import (FPDM_DEFAULTS, FPDM_HELP, MODEL_KEYS, resolve_settings, run_fpdm, save_grid,
                                    score, tune, tune_and_test_subjects, write_outputs)
from plugins.bea.plugin import BEA_DEFAULTS, BEA_HELP, attach_bea
from plugins.common.errors import InputError, run_main
from plugins.common.flags import EVAL_DEFAULTS, make_parser
from plugins.common.run_log import CONFIG_FILE
from plugins.data import BratsSliceDataset, settings_from_args
from plugins.data.brats_layout import check_modalities
from plugins.slice_diffusion.loading import load_trained_model, resolve_model_path, saved_config, scored_weights
from plugins.slice_diffusion.training import TRAINING_HELP, training_defaults

MODEL_HELP = f"model flag; must agree with the run's {CONFIG_FILE} (read from there when omitted)"


def parser():
    model_flags = {k: v for k, v in {**training_defaults(), **BEA_DEFAULTS}.items() if k in MODEL_KEYS}
    model_phrases = {k: f"{BEA_HELP.get(k) or TRAINING_HELP[k]}; {MODEL_HELP}" for k in model_flags}
    return make_parser(__doc__.splitlines()[0], EVAL_DEFAULTS, FPDM_DEFAULTS, model_flags,
                       phrases=(model_phrases, FPDM_HELP))


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    weights, run_dir = resolve_model_path(args.model_path, args.use_ema)
    config = saved_config(run_dir, args, argv, MODEL_KEYS)
    data_dir = args.data_dir or config.data_dir
    tune_subjects, test_subjects = tune_and_test_subjects(run_dir, args.num_eval_cases)
    out_dir = args.out_dir or os.path.join(run_dir, "fpdm")
    num_modalities = len(check_modalities(config.modalities))
    model, diffusion = load_trained_model(weights, config, (num_modalities, num_modalities), attach_bea)
    fpdm = resolve_settings(args, config, diffusion.num_timesteps)
    data = settings_from_args(config)
    kwargs = dict(settings=fpdm, batch_size=args.batch_size, seed=args.seed, slice_step=args.slice_step)
    tune_set = BratsSliceDataset(data_dir, tune_subjects, None, data)
    test_set = BratsSliceDataset(data_dir, test_subjects, None, data)
    if not len(test_set) or not len(tune_set):
        raise InputError(f"--data_dir {data_dir}: the tune or test subjects hold no slices")
    with torch.no_grad():
        tuned = tune(run_fpdm(model, diffusion, tune_set, desc="tune", **kwargs), fpdm,
                     f"{run_dir} (tune subjects {', '.join(tune_subjects)})")
        test = run_fpdm(model, diffusion, test_set, tuned=tuned, desc="test", **kwargs)
    scored = score(test, tuned, fpdm.min_component_px)
    extra = {"model": weights, "scored_weights": scored_weights(weights, config), "tune_subjects": tune_subjects,
             "test_subjects": test_subjects, "args": vars(args)}
    write_outputs(out_dir, test, scored, tuned, fpdm, extra)
    save_grid(os.path.join(out_dir, "grid.png"), test, scored.masks)
    summary = {f"{s}_{k}": v for s, m in scored.metrics.items() if m for k, v in m.items()}
    print(json.dumps({"out_dir": out_dir, "protocol": fpdm.name, "steps": len(fpdm.timesteps), **summary,
                      "flair_mixed_auprc": (scored.reference_flair["mixed"] or {}).get("auprc")}))


if __name__ == "__main__":
    sys.exit(run_main(main))
