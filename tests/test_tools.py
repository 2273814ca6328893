"""Tools of multi-turn rollouts without an engine: the registry and its config, the built-in tools, the tool
processes' deadlines and failures, and the loss mask that keeps tool outputs out of the loss (a gradient
test)."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest
import torch

from reward_server.config import ConfigError
from reward_server.tool_runner import ToolRunner
from reward_server.tools import (
    Calculator,
    PythonTool,
    ToolSettings,
    find_call,
    parse_tool_routes,
    schema,
    tool_class,
)
from trainer import grpo
from trainer.batch import build_train_batch, rollout_stats
from trainer.types import Completion, Prompt, RewardResult, RolloutBatch, ScoredBatch

SETTINGS = ToolSettings(by_source=(("arithmetic", ("calculator",)),), max_turns=4, max_tool_output_tokens=16,
                        timeout_s=2.0, workers=1)


# --- the registry and the config ----------------------------------------------------------------


def test_routes_parse_per_source_with_a_default_for_the_rest():
    routes = parse_tool_routes(("math:python", "*:calculator+tests.tool_fixtures:Echo"))
    settings = replace(SETTINGS, by_source=routes)
    assert settings.tools_for("math") == ("python",)
    assert settings.tools_for("arithmetic") == ("calculator", "tests.tool_fixtures:Echo")
    assert settings.all_tools() == ("calculator", "python", "tests.tool_fixtures:Echo")
    for bad in (("math",), ("math:",), ("math:python", "math:calculator"), ("math:no_such_tool",)):
        with pytest.raises((ValueError, ImportError, AttributeError)):
            parse_tool_routes(bad)


def test_the_config_refuses_a_bad_tool_and_a_zero_turn_limit():
    from examples.configs import tiny_cpu
    from trainer.config import apply_overrides

    cfg = apply_overrides(tiny_cpu(), ["rollout.tools=arithmetic:calculator", "rollout.multi_turn.max_turns=3"])
    assert cfg.rollout.tool_settings() == ToolSettings(by_source=(("arithmetic", ("calculator",)),), max_turns=3,
                                                       max_tool_output_tokens=64, timeout_s=10.0, workers=2)
    assert tiny_cpu().rollout.tool_settings() is None
    with pytest.raises(ConfigError, match="unknown tool 'abacus'"):
        apply_overrides(tiny_cpu(), ["rollout.tools=arithmetic:abacus"]).validate()
    with pytest.raises(ConfigError, match="rollout.multi_turn.max_turns"):
        apply_overrides(tiny_cpu(), ["rollout.tools=arithmetic:calculator", "rollout.multi_turn.max_turns=0"]).validate()


def test_a_call_is_the_text_between_the_last_start_marker_and_the_end_marker():
    tools = {"calculator": Calculator, "python": PythonTool}
    assert find_call("7+8=<calc>1</calc> so <calc>12+30</calc>", tools) == ("calculator", "12+30")
    assert find_call("x<code>print(1)</code>", tools) == ("python", "print(1)")
    assert find_call("</calc> without a start", tools) is None
    assert find_call("<answer>3</answer>", tools) is None
    assert schema(Calculator)["function"]["name"] == "calculator"
    assert tool_class("tests.tool_fixtures:Echo").call_end == "e"


def test_the_calculator_is_exact_and_refuses_what_is_not_arithmetic():
    calc = Calculator()
    assert calc("123456789123456789+987654321987654321") == "1111111111111111110"
    assert calc(" (2+3)*4 - 1 ") == "19" and calc("7/2") == "3.5" and calc("-3**2") == "-9"
    for bad in ("__import__('os')", "x+1", "9**9**9", "'a'*3", "True+1"):
        with pytest.raises((ValueError, SyntaxError)):
            calc(bad)


def test_the_python_tool_runs_in_the_sandbox_and_returns_stdout_or_the_error():
    tool = PythonTool()
    assert tool("```python\nprint(sum(range(101)))\n```") == "5050\n"
    assert tool("print(1/0)") == "ZeroDivisionError: division by zero"
    assert tool("while True: pass") == "Error: timeout"


# --- tool processes: deadlines and failures -------------------------------------------------------


def test_a_tool_that_hangs_raises_or_dies_is_a_bounded_recorded_failure_and_the_pool_keeps_serving():
    runner = ToolRunner(["calculator", *(f"tests.tool_fixtures:{c}" for c in ("Hang", "Raise", "Die", "Chatty"))],
                        workers=1, timeout_s=1.0)
    try:
        assert runner.call("calculator", "2+2").output == "4"
        start = time.monotonic()
        hung = runner.call("tests.tool_fixtures:Hang", "")
        assert time.monotonic() - start < 5.0, "the deadline bounds a hanging tool"
        assert hung.error == "timeout after 1 s" and hung.output == "Error: timeout after 1 s"
        raised = runner.call("tests.tool_fixtures:Raise", "")
        assert raised.error == "ZeroDivisionError: the tool divided by zero"
        died = runner.call("tests.tool_fixtures:Die", "")
        assert died.error is not None and "died" in died.error
        chatty = runner.call("tests.tool_fixtures:Chatty", "")
        assert chatty.error is None and chatty.output == "x" * 10_000
        assert runner.call("calculator", "6*7").output == "42"  # the replaced process serves again
        assert runner.restarts == 2  # the hang and the death
    finally:
        runner.close()


# --- the loss mask --------------------------------------------------------------------------------


def _multi_turn_scored() -> ScoredBatch:
    """One group of two: a response with a tool call (3 policy tokens, 2 tool tokens, 2 policy tokens) and
    one without."""
    with_call = Completion(token_ids=(5, 6, 7, 90, 91, 8, 9), text="ab<calc>1+1</calc><result>2</result>c",
                           rollout_logprobs=(-1.0, -1.1, -1.2, 0.0, 0.0, -1.3, -1.4), finish_reason="stop",
                           loss_mask=(True, True, True, False, False, True, True), turns=2, tool_calls=1)
    plain = Completion(token_ids=(5, 9), text="ab", rollout_logprobs=(-0.5, -0.6), finish_reason="stop", turns=1)
    rollout = RolloutBatch(prompts=(Prompt(0, "q", "2", task="arithmetic"),), prompt_token_ids=((1, 2),),
                           completions=((with_call, plain),), policy_version=0)
    results = ((RewardResult(1.0, {"accuracy": 1.0}, True), RewardResult(0.0, {"accuracy": 0.0}, False)),)
    return ScoredBatch(rollout=rollout, results=results)


def test_tool_tokens_are_out_of_the_response_mask():
    batch = build_train_batch(_multi_turn_scored(), torch.tensor([[1.0, -1.0]]), pad_token_id=0)
    assert batch.input_ids[0].tolist() == [1, 2, 5, 6, 7, 90, 91, 8, 9]
    assert batch.response_mask[0].tolist() == [False, False, True, True, True, False, False, True, True]
    assert batch.response_mask[1].tolist() == [False, False, True, True] + [False] * 5
    assert batch.num_tokens == 7


def test_changing_a_tool_tokens_logprobs_changes_neither_the_loss_nor_its_gradient():
    """Every term of the GRPO loss (ratio, clipping, TIS, KL) reads the tool tokens' positions only through
    the mask: perturbing any logprob there (the policy's, the old, the reference's, vLLM's) changes nothing."""
    batch = build_train_batch(_multi_turn_scored(), torch.tensor([1.0, -1.0]), pad_token_id=0)
    mask = batch.response_mask
    tool = torch.zeros_like(mask)
    tool[0, 5:7] = True                                                            # [N, L] the tool output
    gen = torch.Generator().manual_seed(0)
    base = {name: -torch.rand(mask.shape, generator=gen) for name in ("logprobs", "old", "ref", "rollout")}
    kwargs = dict(advantages=batch.advantages, response_mask=mask, num_tokens=batch.num_tokens, num_sequences=2,
                  clip_eps_low=0.2, clip_eps_high=0.28, dual_clip_c=3.0, kl_coef=0.1, kl_estimator="k3",
                  kl_clamp=10.0, loss_aggregation="token_mean", max_response_tokens=16, tis_cap=2.0)

    def loss_and_grad(shift: float) -> tuple[torch.Tensor, torch.Tensor]:
        moved = {k: torch.where(tool, v + shift * (i + 1), v) for i, (k, v) in enumerate(base.items())}
        logprobs = moved["logprobs"].clone().requires_grad_(True)
        loss, _ = grpo.grpo_loss(logprobs, old_logprobs=moved["old"], ref_logprobs=moved["ref"],
                                 rollout_logprobs=moved["rollout"], **kwargs)
        loss.backward()
        assert logprobs.grad is not None
        return loss.detach(), logprobs.grad

    loss, grad = loss_and_grad(0.0)
    for shift in (-3.0, 0.7, 25.0):
        moved_loss, moved_grad = loss_and_grad(shift)
        assert torch.equal(moved_loss, loss) and torch.equal(moved_grad, grad)
    assert (grad[tool] == 0).all() and (grad[mask] != 0).all()
    assert batch.num_tokens == int(mask.sum()) == 7


def test_tool_metrics_count_calls_turns_masked_tokens_and_accuracy_with_and_without_a_call():
    stats = rollout_stats(_multi_turn_scored())
    assert stats["tools/calls_per_response"] == 0.5 and stats["tools/call_rate"] == 0.5
    assert stats["tools/turns_mean"] == 1.5 and stats["tools/errors"] == 0.0
    assert stats["tools/masked_token_frac"] == pytest.approx(2 / 9)
    assert stats["tools/accuracy_with_call"] == 1.0 and stats["tools/accuracy_without_call"] == 0.0
    one_turn = _multi_turn_scored()
    plain = tuple(replace(c, turns=0, tool_calls=0, loss_mask=()) for c in one_turn.rollout.completions[0])
    assert not any(k.startswith("tools/") for k in rollout_stats(
        replace(one_turn, rollout=replace(one_turn.rollout, completions=(plain,)))))


def test_lengths_the_overlong_penalty_and_the_analytics_read_the_policys_tokens_not_the_tools():
    """A tool output is neither the response's length (`response_length_mean`, DAPO's overlong penalty) nor
    what it wrote (reflection and language analytics): a "wait" inside a tool output is not reflection."""
    from reward_server.config import RewardConfig
    from reward_server.rewards import build_reward_fn

    scored = _multi_turn_scored()
    with_call = replace(scored.rollout.completions[0][0], text="ab<calc>1+1</calc><result>wait 2</result>c",
                        tool_outputs=("<result>wait 2</result>",))
    assert with_call.policy_tokens() == 5 and with_call.policy_text() == "ab<calc>1+1</calc>c"
    plain = scored.rollout.completions[0][1]
    assert plain.policy_tokens() == 2 and plain.policy_text() == plain.text
    scored = replace(scored, rollout=replace(scored.rollout, completions=((with_call, plain),)))
    stats = rollout_stats(scored)
    assert stats["response_length_mean"] == 3.5 and stats["response_length_max"] == 5.0  # 5 and 2 policy tokens
    assert stats["reflection_frac"] == 0.0
    assert stats["tools/masked_token_frac"] == pytest.approx(2 / 9)  # the tool's share still reported

    fn = build_reward_fn(RewardConfig(verifier="arithmetic", overlong_weight=1.0, overlong_buffer_tokens=4),
                         max_response_tokens=8)
    tokens = (1,) * 8
    long_call = Completion(token_ids=tokens, text="<answer>2</answer>", rollout_logprobs=(0.0,) * 8,
                           finish_reason="stop", loss_mask=(True,) * 4 + (False,) * 4, turns=2, tool_calls=1)
    assert fn(scored.rollout.prompts[0], long_call).components["overlong"] == 0.0  # 4 policy tokens: no penalty
    no_call = replace(long_call, loss_mask=())
    assert fn(scored.rollout.prompts[0], no_call).components["overlong"] == -1.0  # 8 of its own: the full penalty


def test_the_python_tool_template_names_the_tools_markers(tmp_path):
    from examples.tiny_model import build_tokenizer, sample_corpus
    from trainer.templates import render

    text = render("python_tool_chat", "What is 2+2?", build_tokenizer(sample_corpus(50), vocab_size=300))
    for marker in (PythonTool.call_start, PythonTool.call_end, PythonTool.output_start, PythonTool.output_end):
        assert marker in text
    assert text.endswith("<|assistant|><think>")
    with pytest.raises(ValueError, match="needs the tokenizer"):
        render("python_tool_chat", "What is 2+2?")


# --- the multi-turn loop against a scripted engine --------------------------------------------------


class _CharTokenizer:
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, ids) -> str:
        return "".join(chr(i) for i in ids)


class _ScriptedEngine:
    """Writes a calculator call until the context holds a result, then the answer; applies stop strings and
    max_tokens as vLLM does, and records every prompt it was given (as token ids)."""

    def __init__(self, call: str = "7+8<calc>123+877</calc>", answered: str = "<result>") -> None:
        self.call, self.answered, self.prompts = call, answered, []

    def get_tokenizer(self):
        return _CharTokenizer()

    async def generate(self, prompt, params, request_id):
        from types import SimpleNamespace

        ids = prompt["prompt_token_ids"]
        self.prompts.append(list(ids))
        text = "<answer>1000</answer>" if self.answered in _CharTokenizer().decode(ids) else self.call
        finish, reason = "stop", None
        hits = [(text.find(s) + len(s), s) for s in params.stop if s in text]
        if hits:
            end, reason = min(hits)
            text = text[:end]
        if len(text) > params.max_tokens:
            text, finish, reason = text[: params.max_tokens], "length", None
        out_ids = [ord(c) for c in text]
        logprobs = [{t: SimpleNamespace(logprob=-0.5)} for t in out_ids]
        completion = SimpleNamespace(token_ids=out_ids, text=text, logprobs=logprobs, finish_reason=finish,
                                     stop_reason=reason)
        yield SimpleNamespace(outputs=[completion])


MULTI_TURN = replace(SETTINGS, max_tool_output_tokens=64)


def _multi_turn(engine, settings: ToolSettings = MULTI_TURN, *, max_tokens: int = 96,
                specs: tuple[str, ...] = ("calculator",)):
    import asyncio

    from actors.rollout_tools import MultiTurn

    multi = MultiTurn(engine)
    try:
        return asyncio.run(multi.generate([ord(c) for c in "Q:"], specs, settings, n=2, temperature=1.0,
                                          top_p=1.0, max_tokens=max_tokens, stop=["</answer>"], seed=3))
    finally:
        multi.close()


def test_a_multi_turn_sample_feeds_each_turn_back_as_token_ids_and_masks_the_tool_output():
    engine = _ScriptedEngine()
    first, second = _multi_turn(engine)
    assert first == second  # the scripted engine ignores seeds: both samples are the same
    turn1, tool, turn2 = "7+8<calc>123+877</calc>", "<result>1000</result>", "<answer>1000</answer>"
    assert first.text == turn1 + tool + turn2 and first.token_ids == tuple(ord(c) for c in first.text)
    assert first.loss_mask == (True,) * len(turn1) + (False,) * len(tool) + (True,) * len(turn2)
    assert first.rollout_logprobs == (-0.5,) * len(turn1) + (0.0,) * len(tool) + (-0.5,) * len(turn2)
    assert (first.turns, first.tool_calls, first.tool_errors, first.finish_reason) == (2, 1, (), "stop")
    assert first.tool_outputs == (tool,) and first.policy_text() == turn1 + turn2
    assert first.policy_tokens() == len(turn1) + len(turn2)
    # the second turn's prompt is the prompt and the first turn's ids and the tool's, as ids
    assert engine.prompts[-1] == [ord(c) for c in "Q:" + turn1 + tool]


def test_the_turn_limit_the_token_budget_and_the_output_limit_bound_a_sample():
    [one_turn, _] = _multi_turn(_ScriptedEngine(), replace(MULTI_TURN, max_turns=1))
    assert (one_turn.turns, one_turn.tool_calls, one_turn.text) == (1, 0, "7+8<calc>123+877</calc>")
    [cut, _] = _multi_turn(_ScriptedEngine(), max_tokens=30)  # the budget ends inside the tool output
    assert len(cut.token_ids) == 30 and cut.finish_reason == "length" and not cut.loss_mask[-1]
    [short, _] = _multi_turn(_ScriptedEngine(), replace(MULTI_TURN, max_tool_output_tokens=20))
    assert "<result>100</result>" in short.text  # cut to 20 tokens, both markers kept
    [failed, _] = _multi_turn(_ScriptedEngine(call="<calc>1/0</calc>"))
    assert failed.tool_errors == ("ZeroDivisionError: division by zero",)
    assert "<result>Error: ZeroDivisionError: division by zero</result>" in failed.text


# --- Qwen2.5's <tool_call> JSON format (a spec ending in @json) ----------------------------------------


def test_a_json_call_is_dispatched_by_name_among_the_sources_json_tools():
    tools = {"calculator@json": Calculator, "python@json": PythonTool, "tests.tool_fixtures:Echo": tool_class(
        "tests.tool_fixtures:Echo")}
    call = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "12+30"}}\n</tool_call>'
    assert find_call("I will add. " + call, tools) == ("calculator@json", "12+30")
    code = '<tool_call>{"name": "python", "arguments": {"code": "print(1)"}}</tool_call>'
    assert find_call(code, tools) == ("python@json", "print(1)")
    as_string = '<tool_call>{"name": "calculator", "arguments": "{\\"expression\\": \\"2*3\\"}"}</tool_call>'
    assert find_call(as_string, tools) == ("calculator@json", "2*3")  # OpenAI's arguments-as-a-string layout
    for bad in ('<tool_call>{"name": "nope", "arguments": {}}</tool_call>', "<tool_call>{not json</tool_call>",
                "</tool_call> without a start", '<tool_call>["calculator"]</tool_call>',
                '<tool_call>{"name": ["calculator"]}</tool_call>'):
        assert find_call(bad, tools) is None, bad
    # the marker format of the same tools is not read for a @json spec
    assert find_call("<calc>1+2</calc>", {"calculator@json": Calculator}) is None
    assert find_call("<calc>1+2</calc>", {"calculator": Calculator}) == ("calculator", "1+2")


def test_json_specs_parse_import_and_refuse_two_tools_of_one_name():
    assert parse_tool_routes(("math:calculator@json+python@json",)) == (("math", ("calculator@json", "python@json")),)
    assert tool_class("calculator@json") is Calculator
    with pytest.raises(ValueError, match="same name|one name"):
        parse_tool_routes(("math:calculator@json+reward_server.tools:Calculator@json",))


def test_a_json_call_runs_the_tool_and_its_output_comes_back_in_tool_response():
    call = '7+8<tool_call>{"name": "calculator", "arguments": {"expression": "123+877"}}</tool_call>'
    engine = _ScriptedEngine(call=call, answered="<tool_response>")
    settings = replace(MULTI_TURN, by_source=(("arithmetic", ("calculator@json",)),))
    first, _ = _multi_turn(engine, settings, max_tokens=200, specs=("calculator@json",))
    tool = "<tool_response>\n1000\n</tool_response>"
    assert first.text == call + tool + "<answer>1000</answer>"
    assert first.tool_outputs == (tool,) and (first.turns, first.tool_calls, first.tool_errors) == (2, 1, ())
    assert first.loss_mask == (True,) * len(call) + (False,) * len(tool) + (True,) * len("<answer>1000</answer>")
