"""The discriminative reward model (a tiny random Qwen2ForSequenceClassification built here) and the
per-source routing that lets one batch mix rule-based and model-based rewards."""

from __future__ import annotations

import math

import pytest

from reward_server.reward_model import RewardModelActor, RewardModelScorer, route_by_source, summary_of
from trainer.templates import r1_cold_start, r1_zero, readable_response
from trainer.types import Completion, Prompt, RewardResult


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory):
    import torch
    from transformers import Qwen2ForSequenceClassification

    from examples.tiny_model import build_tokenizer, model_config, sample_corpus

    out = tmp_path_factory.mktemp("rm")
    tokenizer = build_tokenizer(sample_corpus(200))
    config = model_config(len(tokenizer), hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=2,
                          intermediate_size=128, eos_token_id=tokenizer.eos_token_id)
    config.num_labels = 1
    torch.manual_seed(0)
    Qwen2ForSequenceClassification(config).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return str(out)


def completion(text: str) -> Completion:
    return Completion(token_ids=(1,), text=text, rollout_logprobs=(0.0,), finish_reason="stop")


def item(text: str, task: str = "general", i: int = 0) -> tuple[Prompt, Completion]:
    return Prompt(index=i, text=r1_zero(f"What is {i}+1?"), ground_truth=str(i + 1), task=task), completion(text)


def test_scores_are_sigmoid_of_the_logit_and_batching_does_not_change_them(rm_dir):
    scorer = RewardModelScorer(rm_dir, batch_size=3, weight=0.5)
    texts = ["a", "1+1=2</think><answer>2</answer>", "x" * 40, "7+8+0=15</think><answer>15</answer>", "b c"]
    items = [item(t, i=i) for i, t in enumerate(texts)]
    results = scorer.score(items)
    one_by_one = [RewardModelScorer(rm_dir, batch_size=1).logits([scorer.text_of(p, c)])[0] for p, c in items]
    for r, logit in zip(results, one_by_one, strict=True):
        value = 1 / (1 + math.exp(-logit))
        assert r.components["reward_model"] == pytest.approx(value, rel=1e-4)  # padding does not move the score
        assert r.reward == pytest.approx(0.5 * value, rel=1e-4)
        assert 0 < value < 1 and r.correct == (value > 0.5) and r.error is None
    assert len({round(r.reward, 6) for r in results}) > 1  # it looks at the text


def test_summary_part_ignores_the_reasoning(rm_dir):
    scorer = RewardModelScorer(rm_dir, part="summary")
    a = (Prompt(0, r1_cold_start("q"), "1"), completion(readable_response("long reasoning one", "The answer is 1.")))
    b = (Prompt(0, r1_cold_start("q"), "1"), completion(readable_response("other thoughts", "The answer is 1.")))
    ra, rb = scorer.score([a, b])
    assert ra.reward == pytest.approx(rb.reward, rel=1e-6)
    assert RewardModelScorer(rm_dir, part="response").score([a, b])[0].reward != pytest.approx(ra.reward, rel=1e-6)


def test_summary_of():
    assert summary_of(r1_cold_start("q"), readable_response("r", "s")) == "s"
    assert summary_of(r1_zero("q"), "r</think> s") == " s"
    assert summary_of("p", "plain") == "plain"


def test_actor_class_runs_without_ray(rm_dir):
    assert len(RewardModelActor(rm_dir, batch_size=2).score([item("a"), item("b"), item("c")])) == 3


def test_reward_model_must_have_one_output(tmp_path):
    from transformers import Qwen2ForSequenceClassification

    from examples.tiny_model import build_tokenizer, model_config, sample_corpus

    tokenizer = build_tokenizer(sample_corpus(50))
    config = model_config(len(tokenizer), hidden_size=64, num_layers=1, num_heads=2, num_kv_heads=2,
                          intermediate_size=64)
    config.num_labels = 2
    Qwen2ForSequenceClassification(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="one output"):
        RewardModelScorer(str(tmp_path))


def test_one_batch_mixes_rule_based_and_model_based_rewards(rm_dir):
    """Arithmetic prompts go to the rule-based reward, general ones to the reward model, in place."""
    from reward_server.rewards import build_reward_fn, check_inline
    from trainer.config import RewardConfig

    rule = build_reward_fn(RewardConfig(verifier="arithmetic"), max_response_tokens=64, check=check_inline)
    rm = RewardModelScorer(rm_dir)
    calls: dict[str, int] = {}

    def counted(name, fn):
        def scorer(items):
            calls[name] = calls.get(name, 0) + 1
            return fn(items)
        return scorer

    scorers = {"arithmetic": counted("rule", lambda items: [rule(p, c) for p, c in items]),
               "general": counted("rm", rm.score)}
    items = [item("1+0+0=1</think><answer>1</answer>", "arithmetic", 0), item("Hello there.", "general", 1),
             item("2+0+0=3</think><answer>3</answer>", "arithmetic", 1), item("Some chat.", "chitchat", 2)]
    results = route_by_source(items, scorers, default="general")
    assert calls == {"rule": 1, "rm": 1}  # one call per scorer, not per item
    assert results[0].correct and results[0].components["accuracy"] == 1.0
    assert not results[2].correct and results[2].components["accuracy"] == 0.0
    for r in (results[1], results[3]):  # a source not named goes to the default
        assert set(r.components) == {"reward_model"}
    assert results[1].reward == pytest.approx(rm.score([items[1]])[0].reward)


def test_routing_errors():
    with pytest.raises(ValueError, match="default scorer"):
        route_by_source([], {"a": lambda items: []}, default="b")
    bad = {"a": lambda items: [RewardResult(0.0, {}, False)] * (len(items) + 1)}
    with pytest.raises(RuntimeError, match="returned 2 results for 1"):
        route_by_source([item("x", "a")], bad, default="a")
