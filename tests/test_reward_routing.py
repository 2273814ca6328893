"""The reward chosen per data source: the `reward.routes` config, and the routed scorer a reward actor holds
(rule-based, a judge behind a fake engine, and real tiny reward models built here)."""

from __future__ import annotations

import pytest

from reward_server.rewards import check_inline
from reward_server.scorers import RewardModels, bare_question, build_routed_scorer
from trainer.config import ConfigError, RewardConfig, RewardModelConfig, TrainConfig, apply_overrides
from trainer.templates import r1_cold_start, r1_zero, readable_response
from trainer.types import Completion, Prompt

ROUTED = ["reward.routes=general:reward_model, trivia:judge", "reward.judge.model_path=/j",
          "reward.reward_model.helpfulness_path=/h"]


def test_routes_from_the_command_line():
    cfg = apply_overrides(TrainConfig(), ROUTED).validate()
    assert cfg.reward.route_map() == {"general": "reward_model", "trivia": "judge"}
    assert cfg.reward.scorers_used() == {"rule", "reward_model", "judge"}
    assert TrainConfig().validate().reward.scorers_used() == {"rule"}


@pytest.mark.parametrize("overrides, message", [
    (["reward.routes=general"], "not of the form source:scorer"),
    (["reward.routes=:judge"], "not of the form source:scorer"),
    (["reward.routes=a:rules"], "names scorer 'rules'; expected one of rule, judge, reward_model"),
    (["reward.routes=a:rule,a:rule"], "source 'a' is routed twice"),
    (["reward.routes=a:judge"], "judge.model_path is empty"),
    (["reward.default_scorer=reward_model"], "helpfulness_path and harmlessness_path are both empty"),
    (["reward.default_scorer=judge", "reward.judge.model_path=/j", "reward.judge.num_engines=0"],
     r"reward.judge.num_engines = 0 is out of range"),
    (["reward.default_scorer=judge", "reward.judge.model_path=/j", "reward.judge.max_model_len=16"],
     r"reward.judge.max_model_len = 16 is out of range: allowed \[17, inf\)"),
    (["reward.routes=g:reward_model", "reward.reward_model.harmlessness_path=/h",
      "reward.reward_model.harmlessness_weight=0"], r"harmlessness_weight = 0.0 is out of range"),
    (["reward.default_scorer=llm"], "expected one of rule, judge, reward_model"),
])
def test_bad_routes_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(TrainConfig(), overrides).validate()


def test_the_judge_gets_engines_of_its_own():
    from trainer.roles import resource_spec

    assert [r.name for r in resource_spec(TrainConfig()).roles] == ["rollout", "learner"]
    cfg = apply_overrides(TrainConfig(), [*ROUTED, "reward.judge.num_engines=2"])
    assert resource_spec(cfg).role("judge").num_actors == 2


def test_bare_question():
    assert bare_question(r1_zero("What is 2+3?")) == "What is 2+3?"
    assert bare_question(r1_cold_start("Say hi.")) == "Say hi."
    assert bare_question("no template") == "no template"


def completion(text: str) -> Completion:
    return Completion(token_ids=(1,), text=text, rollout_logprobs=(0.0,), finish_reason="stop")


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory):
    import torch
    from transformers import Qwen2ForSequenceClassification

    from examples.tiny_model import build_tokenizer, model_config, sample_corpus

    out = tmp_path_factory.mktemp("rm")
    tokenizer = build_tokenizer(sample_corpus(100))
    config = model_config(len(tokenizer), hidden_size=64, num_layers=1, num_heads=2, num_kv_heads=2,
                          intermediate_size=64, eos_token_id=tokenizer.eos_token_id)
    config.num_labels = 1
    torch.manual_seed(0)
    Qwen2ForSequenceClassification(config).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return str(out)


def routed_cfg(rm_dir: str) -> RewardConfig:
    return RewardConfig(verifier="arithmetic", format_weight=0.5, routes=("general:reward_model", "trivia:judge"),
                        reward_model=RewardModelConfig(helpfulness_path=rm_dir, harmlessness_path=rm_dir,
                                                       harmlessness_weight=2.0))


def test_one_chunk_mixes_rule_judge_and_reward_models(rm_dir):
    asked: list[str] = []

    def judge(prompts: list[str]) -> list[str]:
        asked.extend(prompts)
        def field(p: str, name: str) -> str:
            return p.split(f"{name}: ", 1)[1].split("\n", 1)[0]
        return [f"Verdict: {'CORRECT' if field(p, 'Reference answer') == field(p, 'Answer to grade') else 'INCORRECT'}"
                for p in prompts]

    scorer = build_routed_scorer(routed_cfg(rm_dir), max_response_tokens=64, judge_generate=judge, check=check_inline)
    items = [
        (Prompt(0, r1_zero("What is 10+11?"), "21", "arithmetic"), completion("0+1+0=1,1+1+0=2</think><answer>21</answer>")),
        (Prompt(1, r1_zero("How many planets?"), "8", "trivia"), completion("count</think><answer>9</answer>")),
        (Prompt(2, r1_cold_start("Say hi."), "", "general"), completion(readable_response("think a", "Hi."))),
        (Prompt(3, r1_zero("How many legs?"), "9", "trivia"), completion("count</think><answer>9</answer>")),
        (Prompt(4, r1_cold_start("Say hi."), "", "general"), completion(readable_response("think b", "Hi."))),
        (Prompt(5, r1_zero("What is 10+11?"), "21", "unrouted"), completion("x</think><answer>20</answer>")),
    ]
    r = scorer.score(items)
    assert r[0].correct and r[0].reward == pytest.approx(1.5) and r[0].components["format"] == 1.0
    assert not r[5].correct and r[5].reward == pytest.approx(0.5)            # unrouted: the default, rule
    assert [r[1].reward, r[3].reward] == [0.0, 1.0] and r[3].components == {"judge": 1.0}
    assert len(asked) == 2 and "Question: How many planets?\n" in asked[0]  # the bare question, one call
    for g in (r[2], r[4]):
        assert set(g.components) == {"helpfulness", "harmlessness"}
        assert g.reward == pytest.approx(g.components["helpfulness"] + 2.0 * g.components["harmlessness"])
    # helpfulness reads the summary only (same in both), harmlessness the whole response (reasoning differs)
    assert r[2].components["helpfulness"] == pytest.approx(r[4].components["helpfulness"], rel=1e-6)
    assert r[2].components["harmlessness"] != pytest.approx(r[4].components["harmlessness"], rel=1e-6)
    scorer.close()


def test_a_failing_scorer_scores_its_items_zero_and_keeps_the_others(rm_dir):
    def judge(prompts: list[str]) -> list[str]:
        raise TimeoutError("judge engine 0 did not answer within 600 s")

    scorer = build_routed_scorer(routed_cfg(rm_dir), max_response_tokens=64, judge_generate=judge, check=check_inline)
    items = [(Prompt(0, r1_zero("q"), "8", "trivia"), completion("x</think><answer>8</answer>")),
             (Prompt(1, r1_zero("What is 1+1?"), "2", "arithmetic"), completion("x</think><answer>2</answer>"))]
    judged, ruled = scorer.score(items)
    assert judged.reward == 0.0 and judged.error is not None
    assert judged.error.startswith("judge scorer failed: TimeoutError: judge engine 0 did not answer")
    assert ruled.correct and ruled.error is None


def test_judge_routes_need_a_judge_engine():
    cfg = RewardConfig(routes=("trivia:judge",))
    with pytest.raises(ValueError, match="no judge engine"):
        build_routed_scorer(cfg, max_response_tokens=64, check=check_inline)
    with pytest.raises(ValueError, match="neither"):
        RewardModels(RewardModelConfig())


def test_step_metrics_per_data_source():
    from trainer.batch import source_stats
    from trainer.types import RewardResult, RolloutBatch, ScoredBatch

    prompts = (Prompt(0, "p", "1", "arithmetic"), Prompt(1, "p", "", "general"), Prompt(2, "p", "2", "arithmetic"))
    rollout = RolloutBatch(prompts=prompts, prompt_token_ids=((1,),) * 3,
                           completions=tuple((completion("a"), completion("b")) for _ in prompts), policy_version=0)
    results = ((RewardResult(1.0, {}, True), RewardResult(0.0, {}, False)),
               (RewardResult(0.25, {}, False), RewardResult(0.75, {}, True)),
               (RewardResult(1.0, {}, True), RewardResult(1.0, {}, True)))
    stats = source_stats(ScoredBatch(rollout, results))
    assert stats == {"source/arithmetic/samples": 4.0, "source/arithmetic/reward": 0.75,
                     "source/arithmetic/accuracy": 0.75, "source/general/samples": 2.0,
                     "source/general/reward": 0.5, "source/general/accuracy": 0.5}
    one_source = ScoredBatch(RolloutBatch(prompts[:1], ((1,),), rollout.completions[:1], 0), results[:1])
    assert source_stats(one_source) == {}   # a single-source run keeps its metrics as they were
