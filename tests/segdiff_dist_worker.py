"""Two-rank worker for segmentation diffusion: ``mpiexec -n 2 python tests/segdiff_dist_worker.py OUT COHORT``.

On the demo cohort (each rank its own shard of the training slices), with the classification
head and uncertainty weighting:

1. ``joint``: plain joint training (no surgery), 2 steps;
2. ``pcgrad``: ``--grad_surgery pcgrad`` with two microbatches a step (``no_sync``, then sync), 3 steps;
3. the projection, on synthetic gradients (an entry None on one rank only; local gradients that do
   not conflict while their rank averages do) and on the trained pcgrad model (two batches of this
   rank through the loop's own ``forward_backward``, one microbatch then two): ``p.grad`` must equal
   the sum over microbatches of ``pcgrad(mean g_seg, mean g_cls)`` computed from the gathered
   per-rank gradients.

Each rank writes ``{run}_rank{r}.pt`` (its final state dict) and ``check_rank{r}.json``.
"""

import json
import os
import sys

import torch
import torch.distributed as dist
from guided_diffusion import logger

from patches.guided_diffusion import setup_dist
from plugins.common.flags import make_parser
from plugins.segdiff.gradients import pcgrad, rank_average
from plugins.segdiff.plugin import SegDiffPlugin, segdiff_training_defaults
from plugins.slice_diffusion.training import run_training
from tests.gd_tiny import run_worker

TINY = ["--image_size", "32", "--num_channels", "32", "--num_res_blocks", "1", "--attention_resolutions", "8",
        "--num_heads", "1", "--diffusion_steps", "30", "--log_interval", "1", "--modalities", "flair,t2",
        "--batch_size", "4", "--save_interval", "1000", "--use_cls_head", "True", "--val_timestep_respacing", "ddim3",
        "--val_num_ensemble", "1"]
RUNS = {"joint": ["--max_steps", "2"], "pcgrad": ["--max_steps", "3", "--grad_surgery", "pcgrad", "--microbatch", "2"]}


def gather_mean(grads):
    """Rank mean of a gradient list (None kept where this rank has None; the pattern is the same on every rank)."""
    flat = torch.cat([g.reshape(-1) for g in grads if g is not None])
    parts = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, flat)
    mean = (torch.stack(parts).sum(0) / len(parts)).split([g.numel() for g in grads if g is not None])
    pieces = iter(mean)
    return [None if g is None else next(pieces).view_as(g) for g in grads], parts


def same_on_every_rank(tensors) -> bool:
    flat = torch.cat([t.reshape(-1) for t in tensors])
    parts = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, flat)
    return all(torch.equal(parts[0], p) for p in parts[1:])


def check_synthetic(rank: int) -> dict:
    params = [torch.zeros(2), torch.zeros(1)]
    if rank == 0:
        g_seg, g_cls = [torch.tensor([2.0, 0.0]), None], [torch.tensor([0.0, -1.0]), torch.tensor([0.5])]
    else:
        g_seg, g_cls = [torch.tensor([0.0, 1.0]), torch.tensor([4.0])], [torch.tensor([-1.0, 0.0]), torch.tensor([0.0])]
    local, local_conflict = pcgrad(g_seg, g_cls)
    mean_seg, mean_cls = rank_average([g_seg, g_cls], params)
    projected, conflicted = pcgrad(mean_seg, mean_cls)
    ref_seg = [torch.tensor([1.0, 0.5]), torch.tensor([2.0])]  # rank 0's missing entry counts as zeros
    ref_cls = [torch.tensor([-0.5, -0.5]), torch.tensor([0.25])]
    reference, ref_conflict = pcgrad(ref_seg, ref_cls)
    naive = []  # what averaging the per-rank projections would give
    for a in local:
        dist.all_reduce(a)
        naive.append(a / dist.get_world_size())
    return {"synthetic_means_equal": all(torch.equal(a, b) for a, b in zip(mean_seg + mean_cls, ref_seg + ref_cls)),
            "synthetic_equal": all(torch.equal(a, b) for a, b in zip(projected, reference)),
            "synthetic_conflicted": bool(conflicted and ref_conflict and not local_conflict),
            "synthetic_naive_differs": not all(torch.allclose(a, b) for a, b in zip(naive, reference))}


def check_model(loop, plugin) -> dict:
    """Two of this rank's batches through the loop's own ``forward_backward`` (DDP model, ``TaskGradients``):
    one microbatch (sync), then two (``no_sync``, then sync); ``p.grad`` against the sum over microbatches of
    ``pcgrad(mean g_seg, mean g_cls)`` computed here from the gathered per-rank task gradients."""
    objective, params = plugin.objective, [p for p in loop.model.parameters() if p.requires_grad]
    out = {"model_equal": [], "model_max_abs_diff": [], "grads_same_on_ranks": [], "local_differ": [],
           "conflicted": [], "hook_counted_conflict": [], "microbatches": []}
    references = []

    def recording_backward(loss):  # observes each microbatch's task gradients, then runs the real hook
        tasks = objective.tasks["seg"].mean(), objective.tasks["cls"].mean()
        local = [torch.autograd.grad(task, params, retain_graph=True, allow_unused=True) for task in tasks]
        (mean_seg, seg_parts), (mean_cls, _) = gather_mean(local[0]), gather_mean(local[1])
        reference, conflicted = pcgrad(mean_seg, mean_cls)
        before = plugin.gradients.conflicts
        plugin.gradients(loop, loss)
        references.append(reference)
        out["local_differ"].append(not torch.equal(seg_parts[0], seg_parts[1]))
        out["conflicted"].append(bool(conflicted))
        out["hook_counted_conflict"].append(plugin.gradients.conflicts - before == int(conflicted))

    loop.mp_trainer.backward_fn = recording_backward
    data = iter(loop.data)
    for microbatch in (loop.batch_size, loop.batch_size // 2):
        batch, cond = next(data)
        loop.microbatch = microbatch
        references.clear()
        loop.forward_backward(batch, cond)  # zero_grad, then each microbatch's forward and backward_fn
        expected = [None] * len(params)
        for reference in references:
            expected = [r if e is None else (e if r is None else e + r) for e, r in zip(expected, reference)]
        pairs = [(p.grad, e if e is not None else torch.zeros_like(p)) for p, e in zip(params, expected)]
        out["microbatches"].append(len(references))
        out["model_equal"].append(all(torch.equal(g, e) for g, e in pairs))
        out["model_max_abs_diff"].append(max(float((g - e).abs().max()) for g, e in pairs))
        out["grads_same_on_ranks"].append(same_on_every_rank([p.grad for p in params]))
    loop.mp_trainer.zero_grad()
    return out


def main(out_dir: str, cohort: str) -> None:
    setup_dist()
    rank = dist.get_rank()
    common = ["--data_dir", cohort, "--csv_path", os.path.join(cohort, "name_mapping.csv"), *TINY]
    for name, extra in RUNS.items():
        args = make_parser("segdiff two-rank worker", segdiff_training_defaults()).parse_args(
            [*common, *extra, "--out_dir", os.path.join(out_dir, name)])
        plugin = SegDiffPlugin(args)
        loop = run_training(args, plugin)
        torch.save(loop.model.state_dict(), os.path.join(out_dir, f"{name}_rank{rank}.pt"))
        if name == "pcgrad":
            check = {**check_synthetic(rank), **check_model(loop, plugin)}
        logger.get_current().close()
    with open(os.path.join(out_dir, f"check_rank{rank}.json"), "w") as f:
        json.dump(check, f)


if __name__ == "__main__":
    run_worker(main, sys.argv[1], sys.argv[2])
