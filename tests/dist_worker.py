"""Two-rank worker for the seam test: run under ``mpiexec -n 2 python tests/dist_worker.py OUT_DIR``.

Each rank starts from different weights and sees different data; after three
steps every parameter (the plugin loss parameter included) must match.
"""

import os
import sys

import torch
import torch.distributed as dist
from guided_diffusion import dist_util

from patches.guided_diffusion import LossTerm, create_seam_diffusion, create_seam_model
from tests.gd_tiny import TINY_DIFFUSION, TINY_MODEL, batches, endless, run_worker, seam_loop, seed_all


def main(out_dir):
    dist_util.setup_dist()
    rank = dist.get_rank()
    seed_all(rank)
    model = create_seam_model(**TINY_MODEL)
    model.add_loss_parameter("log_sigma", float(rank))
    torch.save(model.state_dict(), os.path.join(out_dir, f"initial{rank}.pt"))
    diffusion = create_seam_diffusion(**TINY_DIFFUSION)
    diffusion.add_loss_term(LossTerm(
        "l_sigma", lambda ctx: ctx.model.loss_parameters["log_sigma"].exp() * ctx.terms["mse"], 0.5))
    loop = seam_loop(os.path.join(out_dir, "run"), endless(batches(3, seed=10 + rank)), max_steps=3,
                     model=model, diffusion=diffusion, seed=rank)
    loop.run_loop()
    torch.save(loop.model.state_dict(), os.path.join(out_dir, f"rank{rank}.pt"))


if __name__ == "__main__":
    run_worker(main, sys.argv[1])
