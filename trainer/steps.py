"""The steps the controller loop calls, one function each. They talk to the actor groups only
through their verbs (`generate`, `score`, `compute_logprobs`, `forward_backward`, `optim_step`, ...).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager

import torch

from trainer import grpo
from trainer.analytics import ANALYTICS_PREFIXES, pass_at_ks
from trainer.batch import build_train_batch, concat_scored, rollout_stats, select_groups, useful_groups
from trainer.config import TrainConfig
from trainer.data import PromptSampler
from trainer.evaluate import cons_at_k, pass_at_1
from trainer.ledger import PromptLedger
from trainer.protocols import LearnerGroupProtocol, RewardGroupProtocol, SystemProtocol
from trainer.templates import completion_for_reward
from trainer.types import Prompt, RewardResult, RolloutBatch, RolloutPart, ScoredBatch, TrainBatch


class PhaseTimer:
    """Wall time per named phase of a step: `with timer("rollout"): ...`. `on_phase(phase, begins)` is told
    when each phase begins and ends (the stall watchdog, `trainer.watchdog`). With a `label` ("step 7"), an
    error raised inside a phase carries a note naming the label and the phase."""

    def __init__(self, on_phase: Callable[[str, bool], None] | None = None, label: str = "") -> None:
        self.seconds: dict[str, float] = {}
        self.on_phase = on_phase
        self.label = label

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        if self.on_phase is not None:
            self.on_phase(phase, True)
        try:
            yield
        except Exception as err:
            if self.label:
                err.add_note(f"raised in {self.label}, phase {phase!r}")
            raise
        finally:
            if self.on_phase is not None:
                self.on_phase(phase, False)
        self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start

    def metrics(self) -> dict[str, float]:
        return {f"time/{k}": v for k, v in self.seconds.items()} | {"time/step": sum(self.seconds.values())}

    def parts(self, phase: str) -> dict[str, float]:
        """The parts of one phase, `time/<phase>/<part>` (not counted again in time/step)."""
        return {f"time/{phase}/{k}": v for k, v in self.seconds.items()}


def sample_groups(system: SystemProtocol, sampler: PromptSampler, cfg: TrainConfig, seed: int,
                  ledger: PromptLedger | None = None) -> tuple[ScoredBatch, dict]:
    """B scored groups of G. With DAPO dynamic sampling, groups whose rewards are all equal are dropped
    and more prompts sampled, up to `max_sampling_rounds`; a shortfall is topped up with dropped groups
    (advantage 0) so every step trains on exactly B groups. `ledger` records what was dispatched and scored."""
    a = cfg.algorithm
    rounds = a.max_sampling_rounds if a.dynamic_sampling else 1
    kept: list[ScoredBatch] = []
    dropped: list[ScoredBatch] = []
    first: ScoredBatch | None = None
    have = 0
    timer = PhaseTimer()
    for r in range(rounds):
        prompts = sampler.next(a.prompts_per_step)
        if ledger is not None:
            ledger.dispatched(prompts)
        scored = score(system, prompts, n=a.group_size, cfg=cfg, seed=seed + r, timer=timer)
        if ledger is not None:
            ledger.scored(scored.rollout.prompts)
        first = first or scored
        if not a.dynamic_sampling:
            return scored, rollout_stats(scored) | timer.parts("rollout")
        useful = useful_groups(scored.rewards()).tolist()
        kept.append(select_groups(scored, [i for i, u in enumerate(useful) if u]))
        dropped.append(select_groups(scored, [i for i, u in enumerate(useful) if not u]))
        have += sum(useful)
        if have >= a.prompts_per_step:
            break
    assert first is not None, "max_sampling_rounds >= 1 is checked by validate()"
    merged = concat_scored(kept + dropped)
    batch = select_groups(merged, list(range(a.prompts_per_step)))
    stats = rollout_stats(first) | {"sampling_rounds": float(r + 1),
                                    "dynamic_sampling_shortfall": float(max(0, a.prompts_per_step - have))}
    return batch, stats | timer.parts("rollout")


def score(system: SystemProtocol, prompts: list[Prompt], *, n: int, cfg: TrainConfig, seed: int,
          temperature: float | None = None, timer: PhaseTimer | None = None) -> ScoredBatch:
    """Generate n completions per prompt on the engines and score them on the reward actors, overlapped:

        engine 1 finishes ──on_part──► scoring.add ──► reward actors score its groups  (engine 0 still generates)
        engine 0 finishes ──on_part──► scoring.add ──► reward actors score its groups
        scoring.result(rollout) ──► ScoredBatch in prompt order, the same as scoring the whole batch at once

    The "reward" phase is therefore only what scoring has left once the last engine finished.
    `reward.score_while_generating = false` scores the whole batch after the last engine instead."""
    s = cfg.rollout.sampling
    timer = timer or PhaseTimer()
    tools = cfg.rollout.tool_settings()
    with_tools = {"tools": tools} if tools is not None else {}  # without tools, the call is the one-turn call
    with PartScoring(system.rewards) as scoring:
        with timer("generate"):
            rollout = system.engines.generate(
                prompts, n=n, temperature=s.temperature if temperature is None else temperature, top_p=s.top_p,
                max_tokens=cfg.model.max_response_tokens, stop=list(s.stop), seed=seed,
                on_part=scoring.add if cfg.reward.score_while_generating else None, **with_tools,
            )
        with timer("reward"):
            scored = scoring.result(rollout)
    check_reward_errors(scored, cfg.reward.max_error_fraction)
    return scored


class PartScoring:
    """Scores the parts of one rollout batch on the reward actors as they arrive, while the caller goes on
    waiting for the engines: `add(part)` hands the part to one scoring thread of the driver (parts are
    scored one after another, each over all reward actors, with the reward group's own deadlines), and
    `result(rollout)` waits for them, scores the groups no part brought, and assembles the ScoredBatch in
    the rollout's order. Leaving the `with` block after an error drops the parts not yet started and waits
    for the one being scored (the reward group's deadlines bound that wait)."""

    def __init__(self, rewards: RewardGroupProtocol) -> None:
        self.rewards = rewards
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scoring")
        self._parts: list[tuple[RolloutPart, Future[ScoredBatch]]] = []

    def __enter__(self) -> PartScoring:
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def add(self, part: RolloutPart) -> None:
        self._parts.append((part, self._pool.submit(self.rewards.score, part.batch)))

    def result(self, rollout: RolloutBatch) -> ScoredBatch:
        """[B][G] rewards of `rollout`, whose groups at each part's positions must be that part's."""
        results: list[tuple[RewardResult, ...] | None] = [None] * len(rollout.prompts)
        for part, future in self._parts:
            scored = future.result()
            for row, b in enumerate(part.positions):
                if (part.batch.prompts[row], part.batch.completions[row]) != (rollout.prompts[b], rollout.completions[b]):
                    raise RuntimeError(f"scoring: the part scored for prompt position {b} is not the rollout's group there")
                results[b] = scored.results[row]
        missing = [b for b, r in enumerate(results) if r is None]
        if len(missing) == len(results):
            return self.rewards.score(rollout)
        if missing:
            rest = self.rewards.score(rollout.select(missing))
            for row, b in enumerate(missing):
                results[b] = rest.results[row]
        return ScoredBatch(rollout=rollout, results=tuple(r for r in results if r is not None))


class RewardErrors(RuntimeError):
    """More of a step's samples failed to score than `reward.max_error_fraction` allows."""


def check_reward_errors(scored: ScoredBatch, max_error_fraction: float) -> None:
    """Raise RewardErrors, with the count per error, when the share of samples scored with an error
    exceeds `max_error_fraction`; below it the failed samples stay in the batch with reward 0."""
    errors = Counter(r.error for group in scored.results for r in group if r.error is not None)
    total = sum(len(group) for group in scored.results)
    failed = sum(errors.values())
    if total and failed / total > max_error_fraction:
        reasons = "; ".join(f"{count} x {reason}" for reason, count in errors.most_common(5))
        raise RewardErrors(f"reward actors: {failed} of {total} samples failed to score, more than "
                           f"reward.max_error_fraction = {max_error_fraction:g} allows: {reasons}")


def old_logprobs_from_update(cfg: TrainConfig) -> bool:
    """Whether the update's own forward gives the old logprobs: the step is exactly on-policy (one
    optimizer step over one pass, old logprobs from the learner, none needed before the advantages), so
    the policy that sampled is the one the update starts from and a second forward would repeat it."""
    a = cfg.algorithm
    return (a.old_logprobs_from_update and a.updates_per_step == 1 and a.epochs_per_step == 1
            and a.old_logprobs_source == "learner" and not (a.kl_in_reward and cfg.needs_reference))


def no_old_logprobs(num_sequences: int) -> torch.Tensor:
    """[N, 0]: a batch that carries no old logprobs; the learner's loss uses its forward's own, detached
    (`actors.learner.old_logprobs_or_own`), and reports the learner-vs-vLLM gap itself."""
    return torch.zeros(num_sequences, 0)


def prepare_batch(system: SystemProtocol, scored: ScoredBatch, cfg: TrainConfig) -> tuple[TrainBatch, dict[str, float]]:
    """Pad, fill old and reference logprobs, apply KL-in-reward if asked, compute advantages.

    An exactly on-policy step (`old_logprobs_from_update`) leaves the old logprobs to the update's forward."""
    a = cfg.algorithm
    rewards = scored.rewards()                                                   # [B, G]
    batch = build_train_batch(scored, torch.zeros_like(rewards), pad_token_id=system.pad_token_id,
                              overlong_filter=a.overlong_filter)
    mask = batch.response_mask
    metrics: dict[str, float] = {}
    timer = PhaseTimer()
    if old_logprobs_from_update(cfg):
        old = no_old_logprobs(batch.num_sequences)                               # [N, 0]
    else:
        with timer("old"):
            old = system.learner.compute_logprobs(batch) if a.old_logprobs_source == "learner" \
                else batch.rollout_logprobs                                      # [N, L]
        metrics = _logprob_gap(old, batch.rollout_logprobs, mask)
    with timer("ref"):
        ref = system.compute_ref_logprobs(batch) if cfg.needs_reference else torch.zeros_like(batch.rollout_logprobs)
    metrics |= timer.parts("logprobs")
    if a.kl_in_reward and cfg.needs_reference:
        seq_kl = grpo.sequence_kl(old, ref, mask, estimator=a.kl_estimator, clamp=a.kl_clamp)  # [N]
        rewards = grpo.subtract_kl_from_rewards(rewards, seq_kl, kl_coef=a.kl_coef)
        metrics["kl_in_reward"] = float(seq_kl.mean())
    if a.shuffle_rewards:  # the control: same group statistics, rewards no longer tied to their responses
        generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + scored.rollout.policy_version)
        rewards = grpo.shuffle_within_groups(rewards, generator=generator)
    advantages = grpo.compute_advantages(rewards, estimator=a.advantage_estimator, eps=a.advantage_eps)
    batch = batch.replace(advantages=advantages.reshape(-1), old_logprobs=old, ref_logprobs=ref)
    return batch, metrics


def _logprob_gap(old: torch.Tensor, rollout: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """How far the learner's logprobs of the sampled tokens are from vLLM's (same weights)."""
    gap = (old - rollout).abs()[mask]
    if gap.numel() == 0:
        return {"logprob_gap_mean": 0.0, "logprob_gap_max": 0.0}
    return {"logprob_gap_mean": float(gap.mean()), "logprob_gap_max": float(gap.max())}


def update_policy(learner: LearnerGroupProtocol, batch: TrainBatch, cfg: TrainConfig, seed: int) -> dict[str, float]:
    """`epochs_per_step` passes over the batch in `updates_per_step` shuffled mini-batches."""
    a = cfg.algorithm
    loss_kwargs = grpo.grpo_loss_kwargs(a, max_response_tokens=cfg.model.max_response_tokens)
    generator = torch.Generator().manual_seed(seed)
    logs: list[dict[str, float]] = []
    for _ in range(a.epochs_per_step):
        order = torch.randperm(batch.num_sequences, generator=generator)
        for chunk in order.chunk(a.updates_per_step):
            mini = batch.select(chunk)
            num_tokens = max(mini.num_tokens, 1)
            metrics = learner.forward_backward(mini, "grpo", num_tokens, mini.num_sequences, loss_kwargs)
            logs.append(metrics | learner.optim_step())
    return {k: sum(m[k] for m in logs) / len(logs) for k in logs[-1]}


def evaluate(system: SystemProtocol, prompts: list[Prompt], cfg: TrainConfig, seed: int) -> dict[str, float]:
    """Held-out pass@1 (mean over k samples), pass@2, 4, ..., k (a correct one among k) and cons@k (majority
    vote) at the eval temperature, with the R1-Zero analytics of the samples (`trainer.analytics`)."""
    from reward_server.verifiers import extract_answer

    k = cfg.eval.samples_per_prompt
    scored = score(system, prompts, n=k, cfg=cfg, seed=seed, temperature=cfg.eval.temperature)
    correct = [[r.correct for r in group] for group in scored.results]
    answers = [
        [extract_answer(completion_for_reward(p.text, c.text)) for c in group]
        for p, group in zip(scored.rollout.prompts, scored.rollout.completions, strict=True)
    ]
    stats = rollout_stats(scored)
    return {
        "pass@1": pass_at_1(correct),
        "cons@k": cons_at_k(answers, correct),
        "k": float(k),
        "response_length_mean": stats["response_length_mean"],
        "format": stats.get("reward/format", 0.0),
    } | pass_at_ks(correct) | {key: v for key, v in stats.items() if key.startswith((*ANALYTICS_PREFIXES, "tools/"))}
