"""Run the reproduction's steps as subprocesses, resumably, several at once when they do not depend on each other.

A :class:`Job` is one script call (``python scripts/NAME.py ARGS``) that starts once the jobs it names in
``after`` have finished. Its output goes to ``ROOT/logs/<job>.log``; when it exits 0 a marker
``ROOT/done/<job>`` is written: its wall-clock seconds and the CPU seconds (user + system) its process tree
used, the cost on a machine shared with other work. A job with a marker is skipped, so an interrupted
reproduction resumes from its finished parts; training jobs are also given ``--resume_checkpoint latest`` by
their comparison, so an interrupted run continues from its last checkpoint.

One reproduction folder is used by one process at a time (:func:`folder_lock`): two processes would train
into the same run directories and overwrite each other's verdicts.
"""

from __future__ import annotations

import fcntl
import os
import re
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
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
    after: tuple = ()  # names of the jobs that must finish first (e.g. the training a sampling step reads)

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]+", "__", self.name)


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


@contextmanager
def folder_lock(root: str):
    """Hold ``ROOT/.lock`` (an advisory lock the OS drops when the process ends) or refuse with one line."""
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, ".lock"), "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            raise InputError(f"--out_dir {root}: another reproduction (pid {f.read().strip() or '?'}) is running in "
                             f"this folder; wait for it to finish or choose another --out_dir") from None
        f.truncate(0)
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def check_order(jobs: list[Job]) -> None:
    """Refuse a plan whose job waits for one that no earlier job provides (it would never start)."""
    names = [job.name for job in jobs]
    for i, job in enumerate(jobs):
        missing = [a for a in job.after if a not in names[:i]]
        if missing:
            raise ValueError(f"job {job.name} waits for {missing}, which no earlier job provides")


def dependents(jobs: list[Job]) -> dict[str, int]:
    """``{job.name: number of jobs that wait for it, directly or through others}``."""
    waits_for = {job.name: set(job.after) for job in jobs}
    for job in jobs:  # list order: a job's ``after`` jobs come before it (check_order), so their sets are whole
        for name in job.after:
            waits_for[job.name] |= waits_for[name]
    return {job.name: sum(job.name in w for w in waits_for.values()) for job in jobs}


def run_jobs(jobs: list[Job], root: str, desc: str, threads: int, workers: int = 1,
             timings: dict | None = None) -> None:
    """Run the unfinished ``jobs``, up to ``workers`` at once, each as soon as its ``after`` jobs are done; raise
    :class:`JobFailed` on the first failure, after stopping the others (they resume from their checkpoints next
    time).

    Among the ready jobs, those more jobs wait for start first (list order among equals): a training starts
    before the scoring of an earlier one, so the last wave of trainings is not left waiting for scorings and
    the scorings fill the cores the trainings leave idle.

    ``timings`` (if given) receives ``{job.name: seconds}`` for the jobs run now.
    """
    check_order(jobs)
    os.makedirs(os.path.join(root, "done"), exist_ok=True)
    os.makedirs(os.path.join(root, "logs"), exist_ok=True)
    env = job_env(threads)
    order = dependents(jobs)
    jobs = sorted(jobs, key=lambda job: -order[job.name])  # stable: list order among equals
    finished = {job.name for job in jobs if is_done(root, job)}
    waiting = [job for job in jobs if job.name not in finished]
    running = {}  # pid -> (job, Popen, start, log file)
    bar = tqdm(total=len(jobs), initial=len(finished), desc=desc, unit="job", dynamic_ncols=True)
    try:
        while waiting or running:
            ready = [job for job in waiting if set(job.after) <= finished]
            for job in ready[:max(0, max(1, workers) - len(running))]:
                waiting.remove(job)
                log_path = os.path.join(root, "logs", f"{job.slug}.log")
                command = [sys.executable, os.path.join(REPO_ROOT, "scripts", f"{job.script}.py"),
                           *map(str, job.args)]
                log = open(log_path, "w")
                log.write("$ " + " ".join(command) + "\n")
                log.flush()
                proc = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
                running[proc.pid] = (job, proc, time.perf_counter(), log)
            bar.set_postfix_str(", ".join(job.name for job, *_ in running.values()))
            pid, status, usage = os.wait4(-1, 0)  # the first step to end, with its process tree's CPU time
            if pid not in running:
                continue
            job, proc, start, log = running.pop(pid)
            proc.returncode = os.waitstatus_to_exitcode(status)
            log.close()
            if proc.returncode != 0:
                raise JobFailed(f"step {job.name} failed (exit {proc.returncode}); its output: {log.name}")
            seconds = time.perf_counter() - start
            if timings is not None:
                timings[job.name] = seconds
            with open(os.path.join(root, "done", job.slug), "w") as f:
                f.write(f"{seconds:.1f} {usage.ru_utime + usage.ru_stime:.1f}\n")
            finished.add(job.name)
            bar.update(1)
    finally:
        bar.close()
        for job, proc, _, log in running.values():  # a failure or an interrupt: stop the other steps
            proc.send_signal(signal.SIGTERM)
            proc.wait()
            log.close()
