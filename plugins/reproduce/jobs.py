"""Run the reproduction's steps one at a time as subprocesses, resumably.

A :class:`Job` is one script call (``python scripts/NAME.py ARGS``). Its output goes to
``ROOT/logs/<job>.log``; when it exits 0, ``then`` (if any) runs on its captured output and a
marker ``ROOT/done/<job>`` is written: its wall-clock seconds and the CPU seconds (user + system) its
process tree used, the cost on a machine shared with other work. A job with a marker is skipped, so an interrupted
reproduction resumes from its finished parts; training jobs are also given
``--resume_checkpoint latest`` by their comparison, so an interrupted run continues from its last
checkpoint.
"""

from __future__ import annotations

import os
import re
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field

from tqdm.auto import tqdm

from plugins.common.errors import InputError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class JobFailed(InputError):
    """A step exited non-zero; the message names it and its log."""


@dataclass
class Job:
    name: str  # unique within a reproduction, e.g. "bea/plain_s0/train"
    script: str  # scripts/<script>.py
    args: list = field(default_factory=list)
    then: object = None  # callable(stdout_text) run after success, before the marker

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]+", "__", self.name)


def _children_cpu() -> float:
    """CPU seconds (user + system) of the finished child processes so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def job_seconds(root: str, jobs: list[Job]) -> tuple[float, float]:
    """(wall-clock, CPU) seconds of ``jobs`` from their markers (CPU 0 for markers that predate it)."""
    wall = cpu = 0.0
    for job in jobs:
        with open(os.path.join(root, "done", job.slug)) as f:
            parts = f.read().split()
        wall += float(parts[0]) if parts else 0.0
        cpu += float(parts[1]) if len(parts) > 1 else 0.0
    return wall, cpu


def job_env(threads: int) -> dict:
    """The environment of every job: ``threads`` intra-op threads (oversubscribing a busy CPU is
    several times slower than one thread), warnings of upstream deprecations silenced."""
    env = dict(os.environ)
    if threads > 0:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env.setdefault("PYTHONWARNINGS", "ignore::FutureWarning")
    return env


def is_done(root: str, job: Job) -> bool:
    return os.path.exists(os.path.join(root, "done", job.slug))


def run_jobs(jobs: list[Job], root: str, desc: str, threads: int, timings: dict | None = None) -> None:
    """Run the unfinished ``jobs`` in order with a progress bar; raise :class:`JobFailed` on the first failure.

    ``timings`` (if given) receives ``{job.name: seconds}`` for the jobs run now.
    """
    os.makedirs(os.path.join(root, "done"), exist_ok=True)
    os.makedirs(os.path.join(root, "logs"), exist_ok=True)
    env = job_env(threads)
    bar = tqdm(jobs, desc=desc, unit="job", dynamic_ncols=True)
    for job in bar:
        if is_done(root, job):
            bar.set_postfix_str(f"{job.name} (done before)")
            continue
        bar.set_postfix_str(job.name)
        log_path = os.path.join(root, "logs", f"{job.slug}.log")
        command = [sys.executable, os.path.join(REPO_ROOT, "scripts", f"{job.script}.py"), *map(str, job.args)]
        start, cpu_start = time.perf_counter(), _children_cpu()
        with open(log_path, "w") as log:
            log.write("$ " + " ".join(command) + "\n")
            log.flush()
            proc = subprocess.run(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                                  stderr=log, text=True)
            log.write(proc.stdout)
        if proc.returncode != 0:
            bar.close()
            raise JobFailed(f"step {job.name} failed (exit {proc.returncode}); its output: {log_path}")
        if job.then is not None:
            job.then(proc.stdout)
        if timings is not None:
            timings[job.name] = time.perf_counter() - start
        with open(os.path.join(root, "done", job.slug), "w") as f:
            f.write(f"{time.perf_counter() - start:.1f} {_children_cpu() - cpu_start:.1f}\n")
    bar.close()
