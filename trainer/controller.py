"""The GRPO controller: the driver of a run.

                 prompts (B)                         completions (B x G)
     dataset ──► GRPO controller ──────────────────► rollout engines (vLLM, N actors)
                  │   ▲   │                                   │
                  │   │   └── completions ─► reward actors ◄──┘ (stateless, K actors)
                  │   └────── rewards [B x G] ◄───┘
                  │ advantages = group-normalised rewards
                  ▼
               learner (Megatron TP x PP x DP) + reference ──► weight sync ──► rollout engines

Each step: sample B prompts, generate G completions each, score them, compute old / reference logprobs
and group-relative advantages, update the policy, push the new weights (policy_version + 1) to every
engine, log, and now and then evaluate and checkpoint. By default everything is synchronous and on-policy:
the engines sample with the weights of the previous step, so the policy-version lag is 0. With
`algorithm.async_mode` the engines sample up to `max_staleness` steps ahead while the learner trains (a lag
of at most that many versions, `trainer.overlap`, docs/async.md).
"""

from __future__ import annotations

import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from tqdm import tqdm

from cluster.untyped import JsonValue
from trainer import steps
from trainer.checkpoint import ControllerState, load_controller_state, resume_point, save_checkpoint
from trainer.config import TrainConfig, to_dict
from trainer.data import PromptSampler, RunInputs, check_run_inputs
from trainer.ledger import LEDGER, PromptLedger, fingerprint
from trainer.metrics import MetricsLogger, plot_curves
from trainer.overlap import RolloutSource, policy_version_lag
from trainer.protocols import SystemProtocol
from trainer.run_lock import hold_run_dir
from trainer.watchdog import StallWatchdog

if TYPE_CHECKING:
    from trainer.steps import PhaseTimer
    from trainer.system import System
    from trainer.types import ScoredBatch


def train(cfg: TrainConfig, inputs: RunInputs | None = None) -> Path:
    """Run GRPO as configured; returns the run directory (metrics.jsonl, curves.png, checkpoints/).

    `inputs`: the prompts `check_run_inputs(cfg)` returned (the command line checks them first); loaded
    here, before any actor starts, when not given."""
    cfg = cfg.validate()
    run_dir = Path(cfg.output_dir) / cfg.name
    with hold_run_dir(run_dir):  # a second run in this directory refuses here, having changed nothing
        return _train(cfg, run_dir, inputs)


def _train(cfg: TrainConfig, run_dir: Path, inputs: RunInputs | None) -> Path:
    # Validated before any actor starts: an unusable checkpoint directory refuses here, in seconds.
    checkpoint = resume_point(run_dir, resume=cfg.resume)
    if finished(cfg, run_dir, checkpoint):
        return run_dir
    if inputs is None:  # tokenised once, before the actors take the machine
        inputs = check_run_inputs(cfg)
    run = Run.start(cfg, run_dir, checkpoint, inputs)
    try:
        if run.state.step == 0:
            run.evaluate(step=0)
        bar = tqdm(range(run.state.step + 1, cfg.total_steps + 1), initial=run.state.step,
                   total=cfg.total_steps, desc=cfg.name, unit="step")
        for step in bar:
            timer = run.watchdog.timer(step)  # a phase past cfg.stall_warning_s logs what it waits for
            scored, metrics = train_step(run.system, run.rollouts, cfg, step, run.seed(step), timer)
            run.log_step(step, scored, metrics | timer.metrics() | run.system.memory_metrics())
            bar.set_postfix(reward=f"{metrics['reward']:.3f}", acc=f"{metrics['accuracy']:.2f}")
            if cfg.eval.every_steps and step % cfg.eval.every_steps == 0 or step == cfg.total_steps:
                run.evaluate(step)
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 or step == cfg.total_steps:
                run.checkpoint(step)
        plot_curves(run_dir)
        run.export_model()
    finally:
        run.close()
    return run_dir


def train_step(system: StepSystem, rollouts: RolloutSource, cfg: TrainConfig, step: int, seed: int,
               timer: PhaseTimer) -> tuple[ScoredBatch, dict[str, float]]:
    """One step of the loop: its groups, logprobs and advantages, the update, the weight sync of `step`."""
    with timer("rollout"):
        scored, rollout_metrics = rollouts.next(step)  # sampled ahead with async_mode
    with timer("logprobs"):
        system.sleep_engines(until_sync=True)  # colocated: the learner's GPUs until the sync
        batch, batch_metrics = steps.prepare_batch(system, scored, cfg)
    with timer("train"):
        train_metrics = steps.update_policy(system.learner, batch, cfg, seed)
    with timer("rollout"):
        rollouts.settle()  # the batches sampled ahead are in before the sync
    with timer("weight_sync"):
        sync_metrics = system.sync_weights(version=step)
    return scored, rollout_metrics | batch_metrics | train_metrics | sync_metrics


class StepSystem(SystemProtocol, Protocol):
    """What `train_step` uses of `trainer.system.System` (a benchmark hands in simulated engines)."""

    def sleep_engines(self, *, until_sync: bool = False) -> None: ...

    def sync_weights(self, version: int) -> dict[str, float]: ...


def finished(cfg: TrainConfig, run_dir: Path, checkpoint: Path | None) -> bool:
    """A resumed run that already reached total_steps trains nothing; say so instead of starting actors."""
    if checkpoint is None:
        return False
    done = load_controller_state(checkpoint).step
    if done < cfg.total_steps:
        return False
    tqdm.write(f"{run_dir} already finished {done} steps (total_steps={cfg.total_steps}); nothing to train. "
               f"Raise total_steps to continue it, or --set resume=false to start over (the old outputs "
               f"move to {run_dir}/previous/).")
    return True


@dataclass
class Run:
    """A run's moving parts: the actor groups, the data, the metrics and the resumable state."""

    cfg: TrainConfig
    run_dir: Path
    system: System
    sampler: PromptSampler
    heldout: list
    logger: MetricsLogger
    state: ControllerState
    ledger: PromptLedger
    watchdog: StallWatchdog
    rollouts: RolloutSource

    @classmethod
    def start(cls, cfg: TrainConfig, run_dir: Path, checkpoint: Path | None, inputs: RunInputs) -> Run:
        """Build the actors over `inputs`; resume from `checkpoint` (validated by `resume_point`) if given."""
        from trainer.system import System  # Ray and the actor groups load only when a run starts

        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(_json(to_dict(cfg)))
        system = System.build(cfg)
        try:
            return cls._start_with(system, cfg, run_dir, checkpoint, inputs)
        except BaseException:  # a bad resume, Ctrl-C or SIGTERM here: train()'s clean-up has not begun yet
            system.shutdown()
            raise

    @classmethod
    def _start_with(cls, system: System, cfg: TrainConfig, run_dir: Path, checkpoint: Path | None,
                    inputs: RunInputs) -> Run:
        train_prompts, heldout = inputs.train, inputs.heldout
        state = ControllerState(step=0, policy_version=0, sampler=PromptSampler(train_prompts, seed=cfg.seed).state,
                                sampling_seed=cfg.seed)
        ledger = PromptLedger(fingerprint(train_prompts))
        if checkpoint is not None:
            state = load_controller_state(checkpoint)
            ledger = resume_ledger(checkpoint, state, train_prompts)
            system.load_learner(checkpoint / "learner")  # colocated: while the engines sleep
            system.sync_weights(version=state.policy_version)
            tqdm.write(f"resumed from {checkpoint} at step {state.step}")
        sampler = PromptSampler(train_prompts, seed=cfg.seed, shuffle=cfg.data.shuffle, state=state.sampler)
        sampler.requeue(ledger.in_flight)  # dispatched but never scored before the checkpoint
        logger = MetricsLogger(run_dir)
        if checkpoint is not None:  # lines past the checkpoint are rewritten by this run
            logger.truncate_after(state.step)
        rollouts = RolloutSource(system, sampler, cfg, lambda step: cls.step_seed(cfg, step), ledger)
        return cls(cfg, run_dir, system, sampler, heldout, logger, state, ledger, StallWatchdog(cfg.stall_warning_s),
                   rollouts)

    def seed(self, step: int) -> int:
        return self.step_seed(self.cfg, step)

    @staticmethod
    def step_seed(cfg: TrainConfig, step: int) -> int:
        """Sampling seed of a step: a function of the run seed and the step, so a resumed run repeats it."""
        return random.Random(f"{cfg.rollout.sampling.seed}-{cfg.seed}-{step}").randrange(2**31)

    def log_step(self, step: int, scored: ScoredBatch, metrics: dict[str, float]) -> None:
        tokens = scored.rollout.num_tokens
        metrics["policy_version_lag"] = float(policy_version_lag(step, scored.rollout.policy_version))
        metrics["rollout_tokens_per_s"] = tokens / max(metrics.get("time/rollout", 0.0), 1e-9)
        metrics["tokens_per_s"] = tokens / max(metrics["time/step"], 1e-9)
        self.logger.log(step, "train", metrics)
        self.ledger.trained(step, scored.rollout.prompts)
        self.state = ControllerState(step=step, policy_version=step, sampler=self.sampler.state,
                                     sampling_seed=self.seed(step + 1))

    def evaluate(self, step: int) -> None:
        result = steps.evaluate(self.system, self.heldout, self.cfg, seed=self.seed(-1))
        self.logger.log(step, "eval", result)
        pass_at = "  ".join(f"{key} {value:.3f}" for key, value in result.items() if key.startswith("pass@"))
        reflection = f"  reflection {result['reflection_frac']:.1%}" if "reflection_frac" in result else ""
        tqdm.write(f"step {step}: held-out {pass_at}  cons@{int(result['k'])} "
                   f"{result['cons@k']:.3f}  mean length {result['response_length_mean']:.1f}{reflection}")

    def checkpoint(self, step: int) -> None:
        save_checkpoint(self.run_dir, self.state, self.system.save_learner,
                        extra_files={LEDGER: self.ledger.to_text()})

    def export_model(self) -> Path:
        """The trained policy as a Hugging Face directory (`run_dir/model`), loadable by transformers and
        vLLM; written beside it first, then renamed, so it is never half there."""
        final, tmp = self.run_dir / "model", self.run_dir / "model.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        self.system.export_learner(tmp)
        shutil.rmtree(final, ignore_errors=True)
        tmp.replace(final)
        tqdm.write(f"trained model (Hugging Face format): {final}")
        return final

    def close(self) -> None:
        self.rollouts.close()
        self.watchdog.close()
        self.logger.close()
        self.system.shutdown()


def resume_ledger(checkpoint: Path, state: ControllerState, train_prompts: list) -> PromptLedger:
    """The checkpoint's prompt ledger, checked against its state and the training data (LedgerError if
    they disagree); a checkpoint written before ledgers existed starts a new one at its step."""
    data_sha256 = fingerprint(train_prompts)
    if not (checkpoint / LEDGER).is_file():
        tqdm.write(f"{checkpoint} has no prompt ledger (written by an older version): starting one at step {state.step}")
        return PromptLedger(data_sha256, started_at=state.step)
    ledger = PromptLedger.from_text((checkpoint / LEDGER).read_text(encoding="utf-8"), source=str(checkpoint / LEDGER))
    ledger.check_resume(step=state.step, data_sha256=data_sha256,
                        sampler_handed_out=state.sampler.handed_out(len(train_prompts)))
    return ledger


def _json(obj: JsonValue) -> str:
    import json

    return json.dumps(obj, indent=1, default=str)
