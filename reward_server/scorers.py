"""The reward of each sample chosen by its data source (DeepSeek-R1, arXiv:2501.12948, section 2.3.4, "RL for
all scenarios"): rule-based rewards for reasoning prompts, a generative judge where no rule applies, and
reward models for general prompts, in one GRPO batch.

    items (prompt, completion) ──route by Prompt.task──► "rule"          RewardFn (accuracy, format, language, ...)
                                                      ├► "code"          RewardFn, accuracy from programs run on test cases
                                                      ├► "judge"         JudgeScorer ──► a judge engine (vLLM actor)
                                                      └► "reward_model"  helpfulness RM on the summary
                                                                         + harmlessness RM on the whole response

`RoutedScorer` is what a reward actor holds: `RewardConfig.routes` maps each source to a scorer kind and
`default_scorer` takes the rest; each kind is called once per chunk with its items in order, and the results
come back at the items' positions. A scorer that raises (a judge engine past its deadline, a reward model
that failed) scores its items 0 with the error naming the scorer and the cause: no sample is dropped, so G
never changes.

Departures: R1 adds the rewards of its reward models for general data; here each reward model's score is
`weight x sigmoid(logit)` (see `reward_server.reward_model`) and the two are summed. A general sample counts
as `correct` when every reward model gives it more than 0.5.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

from cluster.untyped import ActorHandle
from reward_server.config import RewardConfig, RewardModelConfig
from reward_server.judge import Generate, JudgeScorer
from reward_server.reward_model import Part, RewardModelScorer, Scorer, route_by_source
from reward_server.rewards import Check, build_reward_fn
from reward_server.samples import Completion, Prompt, RewardResult

Item = tuple[Prompt, Completion]

DEFAULT_ROUTE = "*"
"""Key of the default scorer in the routing table (not a data-source name the data sets use)."""

MAX_ERROR_CHARS = 500

PARTS: tuple[tuple[str, Part], ...] = (("helpfulness", "summary"), ("harmlessness", "response"))
"""R1 judges helpfulness on the summary only, harmlessness on the whole response (reasoning included)."""


def bare_question(prompt_text: str) -> str:
    """The user's question inside a rendered R1 prompt ("... User: q Assistant: ..."), else the whole text."""
    start = prompt_text.rfind(" User: ")
    end = prompt_text.rfind(" Assistant:")
    if start == -1 or end <= start:
        return prompt_text
    return prompt_text[start + len(" User: "):end]


class RewardModels:
    """R1's reward models for general data: helpfulness on prompt + summary, harmlessness on prompt + response."""

    def __init__(self, cfg: RewardModelConfig, *, device: str = "cpu") -> None:
        self.parts: list[tuple[str, RewardModelScorer]] = []
        for name, part in PARTS:
            path = getattr(cfg, f"{name}_path")
            if path:
                self.parts.append((name, RewardModelScorer(
                    path, part=part, weight=getattr(cfg, f"{name}_weight"), batch_size=cfg.batch_size,
                    max_tokens=cfg.max_tokens, device=device)))
        if not self.parts:
            raise ValueError("RewardModels: neither helpfulness_path nor harmlessness_path is set")

    def score(self, items: Sequence[Item]) -> list[RewardResult]:
        per_part = [(name, scorer.score(items)) for name, scorer in self.parts]
        out = []
        for i in range(len(items)):
            parts = [(name, results[i]) for name, results in per_part]
            out.append(RewardResult(
                reward=sum(r.reward for _, r in parts),
                components={name: r.components["reward_model"] for name, r in parts},
                correct=all(r.correct for _, r in parts)))
        return out


class RoutedScorer:
    """Scores a chunk of (prompt, completion) with the scorer its data source is routed to."""

    def __init__(self, scorers: dict[str, Scorer], routes: dict[str, str], default: str,
                 close: Callable[[], None] | None = None) -> None:
        missing = ({default} | set(routes.values())) - set(scorers)
        if missing:
            raise ValueError(f"routes name scorers {sorted(missing)} that were not built (built: {sorted(scorers)})")
        self._table = {source: _guarded(kind, scorers[kind]) for source, kind in routes.items()}
        self._table[DEFAULT_ROUTE] = _guarded(default, scorers[default])
        self._close = close

    def score(self, items: Sequence[Item]) -> list[RewardResult]:
        """One result per item, in order; never raises for a bad sample or a failing scorer."""
        return route_by_source(items, self._table, default=DEFAULT_ROUTE)

    def close(self) -> None:
        if self._close is not None:
            self._close()


def _guarded(kind: str, scorer: Scorer) -> Scorer:
    """`scorer`, with an exception turned into error results that name the scorer and the cause."""

    def score(items: Sequence[Item]) -> list[RewardResult]:
        try:
            return scorer(items)
        except Exception as exc:
            reason = f"{kind} scorer failed: {type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]
            return [RewardResult(reward=0.0, components={}, correct=False, error=reason) for _ in items]

    return score


def build_routed_scorer(cfg: RewardConfig, *, max_response_tokens: int, judge_generate: Generate | None = None,
                        check: Check | None = None, device: str = "cpu") -> RoutedScorer:
    """Unpack `cfg` into the scorers its routes use. `judge_generate` serves the judge (a judge engine's
    `reward_server.judge.engine_generate`); `check` replaces the rule-based reward's verifier sandbox (tests)."""
    used = cfg.scorers_used()
    rule = build_reward_fn(cfg, max_response_tokens=max_response_tokens, check=check)
    scorers: dict[str, Scorer] = {"rule": rule.score_many}
    if "code" in used:  # the same rule-based reward, its accuracy from the code verifier for every source routed here
        scorers["code"] = build_reward_fn(replace(cfg, verifier="code"), max_response_tokens=max_response_tokens,
                                          check=rule.check).score_many
    if "judge" in used:
        if judge_generate is None:
            raise ValueError("reward.routes use the judge, but no judge engine was given to the reward actor")
        judge = JudgeScorer(judge_generate, question_of=lambda p: bare_question(p.text), weight=cfg.judge.weight)
        scorers["judge"] = judge.score
    if "reward_model" in used:
        scorers["reward_model"] = RewardModels(cfg.reward_model, device=device).score
    return RoutedScorer(scorers, cfg.route_map(), cfg.default_scorer, close=rule.close)


def judge_generate_for(cfg: RewardConfig, judge_engines: Sequence[ActorHandle], actor_index: int) -> Generate | None:
    """The judge engine a reward actor asks (actor i: engine i mod the number of engines), or None."""
    if not judge_engines:
        return None
    from reward_server.judge import engine_generate

    engine = judge_engines[actor_index % len(judge_engines)]
    return engine_generate(engine, max_tokens=cfg.judge.max_tokens, timeout_s=cfg.judge.timeout_s)
