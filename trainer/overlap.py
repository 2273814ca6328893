"""Where each step's scored groups come from: sampled when the step starts, or one step ahead.

With `algorithm.one_step_off_policy` the engines generate step t+1 while the learner trains on step t:

    step t:  collect t's groups ─► submit t+1 ──► engines sample t+1 with the weights they hold (t-1)
             learner: logprobs, update on t  ║    (both at once)
             wait for t+1's groups ◄─────────╝
             weight sync: version t ─► engines
    step t+1 trains on groups sampled by version t-1 while the learner starts from version t: a lag of
    one version (`policy_version_lag`), corrected per token by the truncated importance weight
    min(pi_old / pi_rollout, tis_cap) of `trainer.grpo` (old = the learner's logprobs, rollout = vLLM's).

A step waits for its prefetch to finish before the weight sync, so every group of a step is sampled by one
version and no sync ever races a generation. No prefetch crosses a checkpoint: the step that saves one
starts none, so the saved sampler state and prompt ledger are exactly those of a synchronous run, and
a resumed run repeats the same steps. The prefetch runs `steps.sample_groups` in one background thread
(the driver only waits on Ray there); what it dispatches and scores is recorded on a private ledger and
replayed on the run's ledger when its step begins, so the ledger sees steps in order.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from trainer import steps
from trainer.config import TrainConfig
from trainer.data import PromptSampler
from trainer.ledger import PromptLedger
from trainer.protocols import SystemProtocol
from trainer.types import Prompt, ScoredBatch


def policy_version_lag(step: int, sampled_version: int) -> int:
    """Versions between the weights step `step` starts from (step - 1) and those that sampled its groups."""
    return step - 1 - sampled_version


@dataclass
class DeferredLedger(PromptLedger):
    """Records a prefetch's `dispatched` / `scored` calls, in order, for the run's ledger to replay."""

    events: list[tuple[str, tuple[Prompt, ...]]] = field(default_factory=list)

    def dispatched(self, prompts) -> None:
        self.events.append(("dispatched", tuple(prompts)))

    def scored(self, prompts) -> None:
        self.events.append(("scored", tuple(prompts)))

    def replay(self, ledger: PromptLedger) -> None:
        for kind, prompts in self.events:
            ledger.dispatched(prompts) if kind == "dispatched" else ledger.scored(prompts)


class RolloutSource:
    """Each step's B scored groups: `next(step)`, then `settle()` before the step's weight sync."""

    def __init__(self, system: SystemProtocol, sampler: PromptSampler, cfg: TrainConfig,
                 seed_of: Callable[[int], int], ledger: PromptLedger | None):
        self.system, self.sampler, self.cfg, self.seed_of, self.ledger = system, sampler, cfg, seed_of, ledger
        self.ahead = cfg.algorithm.one_step_off_policy
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rollout-prefetch") if self.ahead else None
        self._pending: tuple[int, Future, DeferredLedger] | None = None

    def next(self, step: int) -> tuple[ScoredBatch, dict]:
        """Step `step`'s groups (prefetched, or sampled now), then the prefetch of step + 1 if allowed."""
        if self._pending is not None:
            ahead_step, future, deferred = self._pending
            self._pending = None
            if ahead_step != step:
                raise RuntimeError(f"prefetched groups of step {ahead_step} asked for at step {step}")
            scored, metrics = future.result()
            if self.ledger is not None:
                deferred.replay(self.ledger)
        else:
            scored, metrics = steps.sample_groups(self.system, self.sampler, self.cfg, self.seed_of(step), self.ledger)
        if self._may_prefetch_after(step):
            deferred = DeferredLedger(data_sha256="")
            future = self._pool.submit(steps.sample_groups, self.system, self.sampler, self.cfg,  # type: ignore[union-attr]
                                       self.seed_of(step + 1), deferred)
            self._pending = (step + 1, future, deferred)
        return scored, metrics

    def settle(self) -> None:
        """Wait until the prefetch in flight has its groups (raising its error): call before a weight sync."""
        if self._pending is not None:
            self._pending[1].result()

    def _may_prefetch_after(self, step: int) -> bool:
        c = self.cfg
        saves = c.checkpoint_every and step % c.checkpoint_every == 0
        return self.ahead and step < c.total_steps and not saves

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
