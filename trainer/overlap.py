"""Where each step's scored groups come from: sampled when the step starts, or up to K steps ahead.

With `algorithm.async_mode` (K = `max_staleness`; the deprecated `one_step_off_policy` is K = 1) the engines
work through an ordered queue that the controller fills, while the learner trains:

    step t:  take t's groups ─► submit t+1 .. t+K not yet submitted ─► engines sample them, in step order, with
             the weights they hold (version t-1)
             learner: logprobs, update on t  ║   (both at once)
             settle: every submitted batch has its groups ◄─╝
             weight sync: version t ─► engines (they pick it up between two generate calls)

so the groups of step s are sampled by version max(c, s-1-K), where c is the last checkpoint step before s:
a lag (`policy_version_lag`) of at most K versions behind the weights the learner starts step s from,
corrected per token by the truncated importance weight min(pi_old / pi_rollout, tis_cap) of `trainer.grpo`
(old = the learner's logprobs, rollout = vLLM's, recorded for every sampled token). A batch is sampled by one
version (each engine samples and receives under one lock, `actors.rollout.RolloutWorker`), so every token
of it carries that version. A batch that lags more than K (it cannot under this schedule; the check guards the
bound) is dropped, counted (`async/dropped_groups`), and the step samples again.

The schedule is a function of the step and the checkpoint steps only, so the same seed gives the same run,
and a resumed run repeats it exactly: no batch is submitted across a checkpoint (the step that saves one
submits nothing past it), so the saved sampler state and prompt ledger are exactly those of a synchronous
run. Each weight sync waits for the batches already submitted (`settle`): the push is a meeting of the
learner and the engines, so the learner waits for the generate in flight at most, and a sync never races a
generation. The batches run `steps.sample_groups` one after another on one background thread (the driver
only waits on Ray there); what each dispatches and scores is recorded on a private ledger and replayed on the
run's ledger when its step begins, so the ledger sees steps in order.
"""

from __future__ import annotations

from collections import deque
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


def scheduled_version(step: int, *, lag_bound: int, checkpoint_every: int) -> int:
    """The version that samples step `step`'s groups under `RolloutSource`'s schedule: step - 1 - lag_bound,
    but never older than the last checkpoint step before `step` (nothing is submitted across a checkpoint)."""
    last_checkpoint = (step - 1) // checkpoint_every * checkpoint_every if checkpoint_every else 0
    return max(0, last_checkpoint, step - 1 - lag_bound)


@dataclass
class DeferredLedger(PromptLedger):
    """Records a batch's `dispatched` / `scored` calls, in order, for the run's ledger to replay."""

    events: list[tuple[str, tuple[Prompt, ...]]] = field(default_factory=list)

    def dispatched(self, prompts) -> None:
        self.events.append(("dispatched", tuple(prompts)))

    def scored(self, prompts) -> None:
        self.events.append(("scored", tuple(prompts)))

    def replay(self, ledger: PromptLedger) -> None:
        for kind, prompts in self.events:
            ledger.dispatched(prompts) if kind == "dispatched" else ledger.scored(prompts)


@dataclass
class Ahead:
    """A batch submitted before its step: its groups (when done) and what it recorded for the ledger."""

    step: int
    future: Future[tuple[ScoredBatch, dict]]
    ledger: DeferredLedger


class RolloutSource:
    """Each step's B scored groups: `next(step)`, then `settle()` before the step's weight sync."""

    def __init__(self, system: SystemProtocol, sampler: PromptSampler, cfg: TrainConfig,
                 seed_of: Callable[[int], int], ledger: PromptLedger | None):
        self.system, self.sampler, self.cfg, self.seed_of, self.ledger = system, sampler, cfg, seed_of, ledger
        self.lag_bound = cfg.algorithm.lag_bound
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rollout-ahead") if self.lag_bound else None
        self._ahead: deque[Ahead] = deque()  # submitted, oldest first; run in this order on the one thread
        self.dropped_groups = 0
        """Groups dropped for lagging more than lag_bound versions, over the run so far."""

    @property
    def _pending(self) -> Ahead | None:
        """The oldest batch submitted ahead (None: none)."""
        return self._ahead[0] if self._ahead else None

    def next(self, step: int) -> tuple[ScoredBatch, dict]:
        """Step `step`'s groups (sampled ahead, or now), then submit the batches of the steps after it that the
        schedule allows."""
        scored, metrics = self._take(step)
        dropped = 0
        if self.lag_bound and policy_version_lag(step, scored.rollout.policy_version) > self.lag_bound:
            dropped = len(scored.rollout.prompts)  # scored, never trained: the ledger records them as dropped
            self.settle()  # nothing else draws from the sampler while this step samples again
            scored, metrics = steps.sample_groups(self.system, self.sampler, self.cfg, self.seed_of(step), self.ledger)
        self.dropped_groups += dropped
        self._submit_after(step)
        if self.lag_bound:
            metrics = metrics | {"async/dropped_groups": float(dropped), "async/batches_ahead": float(len(self._ahead))}
        return scored, metrics

    def _take(self, step: int) -> tuple[ScoredBatch, dict]:
        if not self._ahead:
            return steps.sample_groups(self.system, self.sampler, self.cfg, self.seed_of(step), self.ledger)
        ahead = self._ahead.popleft()
        if ahead.step != step:
            raise RuntimeError(f"groups sampled ahead for step {ahead.step} asked for at step {step}")
        scored, metrics = ahead.future.result()
        if self.ledger is not None:
            ahead.ledger.replay(self.ledger)
        return scored, metrics

    def _submit_after(self, step: int) -> None:
        """Submit steps step+1 .. step+lag_bound not yet submitted, stopping before one whose predecessor
        saves a checkpoint (that step's checkpoint must see no batch in flight) and after the last step."""
        if self._pool is None:
            return
        last = self._ahead[-1].step if self._ahead else step
        for s in range(last + 1, step + self.lag_bound + 1):
            if s > self.cfg.total_steps or self._saves(s - 1):
                return
            deferred = DeferredLedger(data_sha256="")
            future = self._pool.submit(steps.sample_groups, self.system, self.sampler, self.cfg, self.seed_of(s),
                                       deferred)
            self._ahead.append(Ahead(s, future, deferred))

    def _saves(self, step: int) -> bool:
        every = self.cfg.checkpoint_every
        return bool(every and step % every == 0)

    def settle(self) -> None:
        """Wait until every batch submitted has its groups (raising the first error): call before a weight
        sync, so the batches are sampled by the versions the schedule says and no sync races a generation."""
        for ahead in self._ahead:
            ahead.future.result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
