"""Reward configuration: how completions are scored (the `reward` section of a run's config).

Frozen dataclasses, every default here and nowhere else. They live beside the reward actors that take them,
so nothing in `reward_server` imports the trainer; `trainer.config` re-exports them with the rest of a run's
configuration, and `TrainConfig.validate()` checks their ranges (`trainer.config_checks.check_reward`).
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import Literal


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the field."""


ScorerKind = Literal["rule", "judge", "reward_model", "code"]
"""How a data source is scored: the rule-based reward, a generative judge, reward models, or the rule-based
reward with the `code` verifier (its programs run against the row's test cases)."""
SCORER_KINDS: tuple[str, ...] = typing.get_args(ScorerKind)


@dataclass(frozen=True)
class JudgeConfig:
    model_path: str = ""
    """Hugging Face directory of the generative judge ('': no judge). It is served on engines of its own,
    apart from the rollout engines: it is another model, and it never takes the policy's weights."""
    num_engines: int = 1
    """Judge engines (vLLM, one Ray actor each); the reward actors share them."""
    tensor_parallel_size: int = 1
    """Devices per judge engine."""
    max_model_len: int = 1024
    """Judge prompt (question, reference, prediction) plus verdict length the engine reserves for."""
    max_tokens: int = 16
    """Most tokens of a verdict; the judge decodes greedily and stops at a blank line."""
    gpu_memory_utilization: float = 0.3
    """Share of its GPU a judge engine may take (ignored on CPU)."""
    cpu_kvcache_gib: float = 0.25
    """KV-cache size per judge engine on CPU."""
    weight: float = 1.0
    """Reward of a CORRECT verdict (INCORRECT and malformed ones score 0)."""
    timeout_s: float = 600.0
    """Deadline of one reward actor's batch of judge prompts; past it the batch scores 0 with the error."""


@dataclass(frozen=True)
class CodeRewardConfig:
    partial_credit: bool = False
    """Accuracy is the share of test cases passed, instead of 1 only when every case passes."""
    workers: int = 0
    """Programs a reward actor runs at once (0: the CPUs the actor's process may use)."""
    case_wall_s: float | None = None
    """Wall-clock limit of one test case (None: `reward_server.code_sandbox.SandboxLimits.wall_s`)."""
    memory_bytes: int | None = None
    """Address-space limit of a program (None: `SandboxLimits.memory_bytes`)."""


@dataclass(frozen=True)
class RewardModelConfig:
    helpfulness_path: str = ""
    """Sequence-classification reward model (one logit) scoring prompt + summary, as R1 judges helpfulness
    ('': none)."""
    helpfulness_weight: float = 1.0
    """Weight of sigmoid(helpfulness logit)."""
    harmlessness_path: str = ""
    """Reward model scoring prompt + the whole response (reasoning too), as R1 judges harmlessness ('': none)."""
    harmlessness_weight: float = 1.0
    """Weight of sigmoid(harmlessness logit)."""
    batch_size: int = 16
    """Texts per reward-model forward pass in a reward actor."""
    max_tokens: int = 1024
    """Scored texts are cut to this many tokens."""


@dataclass(frozen=True)
class RewardConfig:
    verifier: Literal["math", "arithmetic", "countdown", "code"] = "math"
    """Accuracy checker: symbolic math, the demo tasks' exact verifiers, or `code` (the answer's last fenced
    Python block runs against the row's test cases in a sandbox; docs/code_rewards.md)."""
    accuracy_weight: float = 1.0
    """Weight of the accuracy reward (1 for a correct answer)."""
    format_weight: float = 0.0
    """Weight of the R1-Zero format reward (<think>...</think><answer>...</answer>)."""
    language_weight: float = 0.0
    """Weight of the language-consistency reward (R1)."""
    target_language: Literal["en", "zh"] = "en"
    """Language the chain of thought should be written in."""
    overlong_weight: float = 0.0
    """Weight of DAPO's soft overlong punishment."""
    overlong_buffer_tokens: int = 16
    """Length of the soft punishment ramp before max_response_tokens."""
    num_actors: int = 1
    """Stateless reward actors (K)."""
    timeout_s: float = 5.0
    """Per-sample limit; a verifier past it is killed and scores 0 with reason `timeout`."""
    max_error_fraction: float = 0.5
    """A sample whose reward raises or times out scores 0 with its error recorded (`reward_errors`); the
    run stops only when more than this share of one step's samples failed (a broken verifier or scorer
    would otherwise train on zeros). 1 never stops."""
    score_while_generating: bool = True
    """Score each engine's groups as soon as that engine has finished, while the others still generate
    (`trainer.steps.score`); false scores the whole batch after the last engine (same rewards)."""
    routes: tuple[str, ...] = ()
    """Scorer per data source (a prompt's `task`), as `source:scorer` pairs with scorer one of rule, judge,
    reward_model, code; e.g. `--set reward.routes=general:reward_model,trivia:judge`. R1's RL for all scenarios:
    rule-based rewards for reasoning prompts, reward models for general ones."""
    default_scorer: ScorerKind = "rule"
    """Scorer of every data source that `routes` does not name."""
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    """The generative judge, for sources routed to `judge`."""
    reward_model: RewardModelConfig = field(default_factory=RewardModelConfig)
    """The reward models, for sources routed to `reward_model`."""
    code: CodeRewardConfig = field(default_factory=CodeRewardConfig)
    """The `code` verifier: partial credit, parallel programs and sandbox limits. `timeout_s` is a sample's
    budget over all its test cases."""

    def route_map(self) -> dict[str, str]:
        """`routes` as {source: scorer}; raises ConfigError on a malformed or repeated pair."""
        out: dict[str, str] = {}
        for pair in self.routes:
            source, sep, kind = (part.strip() for part in pair.partition(":"))
            if not (sep and source and kind):
                raise ConfigError(f"reward.routes: {pair!r} is not of the form source:scorer")
            if kind not in SCORER_KINDS:
                raise ConfigError(f"reward.routes: {pair!r} names scorer {kind!r}; expected one of "
                                  f"{', '.join(SCORER_KINDS)}")
            if source in out:
                raise ConfigError(f"reward.routes: source {source!r} is routed twice")
            out[source] = kind
        return out

    def scorers_used(self) -> set[str]:
        """The scorer kinds some data source may be routed to (the default included)."""
        return set(self.route_map().values()) | {self.default_scorer}

