"""The whole loop on the tiny model: real vLLM engines, a TP=2 Megatron learner with its reference,
reward actors, weight sync, checkpoints; then a driver killed after a checkpoint resumes exactly.

One uninterrupted reference run (4 steps over a 16-prompt file, so each 2 steps are one epoch;
checkpoints after steps 2 and 4) serves both tests. The second runs the same config as a separate
driver process, SIGKILLs it once the step-2 checkpoint is committed (an epoch boundary), resumes, and
must reproduce the reference: per-step losses and rewards, the prompt ids each step trained, and the
final parameters bit for bit. While that driver runs, nothing of it may listen on all interfaces.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from trainer.config import apply_overrides
from trainer.metrics import read_metrics

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "artifacts" / "tiny-qwen2"
DATA = ROOT / "artifacts" / "data" / "arithmetic"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not MODEL.exists(), reason="run `python -m examples.build_tiny` (make test does) first"),
]


STEPS, CHECKPOINT_EVERY = 4, 2
EPOCH_PROMPTS = 16
"""Training prompts in the file: 2 steps of 8 prompts, so the step-2 checkpoint sits at an epoch boundary."""
RUN_TIMEOUT_S = 900.0
"""One driver run on a shared 2-core machine: Ray, 2 vLLM engines, a TP=2 learner, 4 steps."""


def overrides(out: Path, name: str, train_path: Path) -> list[str]:
    return [f"model.path={MODEL}", f"data.train_path={train_path}", f"data.eval_path={DATA / 'heldout.jsonl'}",
            f"output_dir={out}", f"name={name}", "data.eval_size=16", "eval.every_steps=0",
            "eval.samples_per_prompt=2", f"total_steps={STEPS}", f"checkpoint_every={CHECKPOINT_EVERY}"]


def tiny_config(out: Path, name: str, train_path: Path, **changes):
    from examples.configs import tiny_cpu

    return replace(apply_overrides(tiny_cpu(), overrides(out, name, train_path)), **changes)


@pytest.fixture(scope="module")
def train_file(tmp_path_factory) -> Path:
    lines = (DATA / "train.jsonl").read_text().splitlines()[:EPOCH_PROMPTS]
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory, train_file) -> Path:
    """The uninterrupted run."""
    from trainer.controller import train

    return train(tiny_config(tmp_path_factory.mktemp("runs"), "full", train_file))


def ledger_steps(run_dir: Path, step: int = STEPS) -> list[dict]:
    text = (run_dir / "checkpoints" / f"step_{step:06d}" / "ledger.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()[1:]]


def parameters_sha256(run_dir: Path) -> str:
    import torch
    from safetensors.torch import load_file

    tensors = load_file(run_dir / "model" / "model.safetensors")
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def test_run_trains_logs_and_checkpoints(reference):
    train_rows = read_metrics(reference, "train")
    assert [r["step"] for r in train_rows] == [1, 2, 3, 4]
    assert [r["step"] for r in read_metrics(reference, "eval")] == [0, 4]
    assert (reference / "curves.png").exists() and any((reference / "tb").iterdir())
    for row in train_rows:
        # vLLM sampled with exactly the learner's weights: same logprobs up to fp32 noise.
        assert row["logprob_gap_max"] < 1e-3, row
        assert row["policy_version_lag"] == 0
        assert row["reward_errors"] == 0
        for key in ("loss", "kl", "entropy", "grad_norm", "clip_frac_low", "clip_frac_high", "accuracy",
                    "reward/accuracy", "reward/format", "response_length_mean", "truncated_frac",
                    "zero_variance_group_frac", "time/rollout", "time/train", "tokens_per_s"):
            assert key in row, key
    # The ledger: each epoch (2 steps) trained every prompt of the file exactly once.
    steps = ledger_steps(reference)
    assert [s["step"] for s in steps] == [1, 2, 3, 4] and all(s["dropped"] == [] for s in steps)
    for epoch in (steps[:2], steps[2:]):
        assert sorted(i for s in epoch for i in s["trained"]) == list(range(EPOCH_PROMPTS))


def test_driver_killed_after_a_checkpoint_resumes_exactly(reference, train_file, tmp_path):
    from tests.test_two_hosts import WILDCARDS
    from trainer.controller import train

    out = tmp_path / "runs"
    run_dir = out / "killed"
    cmd = [sys.executable, "-m", "trainer", "train", "--example", "tiny_cpu"]
    for item in overrides(out, "killed", train_file):
        cmd += ["--set", item]
    log = (tmp_path / "driver.log").open("w")
    driver = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    ours: dict[int, Any] = {}
    wildcard: list[str] = []
    heard: set[str] = set()
    try:
        latest = run_dir / "checkpoints" / "latest"
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while not (latest.exists() and latest.read_text().strip() == f"step_{CHECKPOINT_EVERY:06d}"):
            assert driver.poll() is None, f"the driver exited {driver.returncode}: {(tmp_path / 'driver.log').read_text()[-3000:]}"
            assert time.monotonic() < deadline, "no step-2 checkpoint in time"
            tree = process_tree(driver.pid)
            ours.update(tree)
            found = listening(set(tree))
            heard.update(found)
            wildcard += [address for address in found if address.rpartition(":")[0] in WILDCARDS]
            time.sleep(0.2)
        ours.update(process_tree(driver.pid))
        driver.send_signal(signal.SIGKILL)  # the driver only: its actors must not outlive it for long
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
        log.close()
        reap([p for pid, p in ours.items() if pid != driver.pid])
    assert wildcard == [], f"the run listened on all interfaces: {wildcard}"
    assert len(ours) > 5 and heard, f"saw {len(ours)} processes and {len(heard)} listeners: the check proved nothing"
    killed_rows = read_metrics(run_dir, "train")
    assert killed_rows and killed_rows[-1]["step"] in (2, 3), killed_rows  # killed after the checkpoint

    # Resume: step 2's checkpoint holds the sampler at the start of epoch 1; steps 3 and 4 train it.
    resumed = train(tiny_config(out, "killed", train_file))
    rows, ref_rows = read_metrics(resumed, "train"), read_metrics(reference, "train")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for row, ref in zip(rows, ref_rows, strict=True):
        for key in ("reward", "accuracy", "response_length_mean", "loss", "pg_loss", "kl", "grad_norm"):
            assert row[key] == pytest.approx(ref[key], rel=1e-6, abs=1e-7), (row["step"], key)
    assert ledger_steps(resumed) == ledger_steps(reference)
    assert parameters_sha256(resumed) == parameters_sha256(reference)


def process_tree(pid: int) -> dict[int, Any]:
    """{pid: psutil.Process} of `pid` and its descendants (psutil refuses to signal a reused pid)."""
    import psutil

    try:
        root = psutil.Process(pid)
        return {p.pid: p for p in [root, *root.children(recursive=True)]}
    except psutil.NoSuchProcess:
        return {}


def listening(pids: set[int]) -> list[str]:
    """Local addresses (host:port) that these processes listen on (TCP)."""
    import re

    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    return [line.split()[3] for line in out.splitlines()
            if any(int(p) in pids for p in re.findall(r"pid=(\d+)", line))]


def reap(procs: list[Any], grace_s: float = 30.0) -> None:
    """Wait for the killed driver's processes to exit on their own; kill the ones that do not."""
    import psutil

    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=10)


def test_an_engine_killed_mid_run_is_replaced_and_the_run_completes(train_file, tmp_path, monkeypatch):
    """Engine process SIGKILLed while step 2 generates: a new engine starts in its bundle, gets the
    current weights, and the step trains on all 8 groups; the run finishes both steps."""
    import threading

    import psutil

    from actors.engine_group import EngineGroup
    from trainer.controller import train

    original, seen, victims = EngineGroup.generate, {}, []

    def kill_an_engine() -> None:
        try:  # Ray titles an actor's process "ray::RolloutWorker" (".generate" while it generates)
            tree = psutil.Process().children(recursive=True)
            engine = next(p for p in tree if " ".join(p.cmdline()).startswith("ray::RolloutWorker"))
            victims.extend([engine, *engine.children(recursive=True)])  # its vLLM processes, reaped below
            time.sleep(0.05)  # let the step's generate reach the engines
            engine.kill()
            seen["killed"] = engine.pid
        except Exception as e:  # reported by the assertions below
            seen["kill_error"] = repr(e)

    def generate(self, prompts, **kwargs):
        seen["group"] = self
        seen["calls"] = seen.get("calls", 0) + 1
        if seen["calls"] == 3:  # 1: the step-0 evaluation, 2: step 1, 3: step 2
            threading.Thread(target=kill_an_engine, daemon=True).start()
        return original(self, prompts, **kwargs)

    monkeypatch.setattr(EngineGroup, "generate", generate)
    try:
        run_dir = train(replace(tiny_config(tmp_path, "engine_killed", train_file), total_steps=2, checkpoint_every=0))
    finally:
        reap(victims, grace_s=5.0)
    assert "killed" in seen, seen.get("kill_error")
    failures = seen["group"].failures
    assert len(failures) == 1 and "the actor died" in failures[0], failures
    rows = read_metrics(run_dir, "train")
    assert [r["step"] for r in rows] == [1, 2] and rows[1]["logprob_gap_max"] < 1e-3
    steps = ledger_steps(run_dir, step=2)
    assert [len(s["trained"]) for s in steps] == [8, 8]
    assert sorted(i for s in steps for i in s["trained"]) == list(range(EPOCH_PROMPTS))
