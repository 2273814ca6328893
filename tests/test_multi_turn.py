"""Multi-turn rollouts on a real vLLM CPU engine (the suite's shared `tiny_engines`), through the engine group
as a run calls it: a random tiny model whose every "e" ends a call of `tests.tool_fixtures:Echo`.

The response's token ids must be the turns' token ids concatenated exactly: each tool output is the
tokenised `[12]` (loss mask 0), and every policy token's logprob as vLLM reported it equals the one
Hugging Face computes on the whole concatenated sequence, which would fail if any turn had been fed a
re-tokenised prefix. The same seed gives the same groups again (what an exact resume needs).

Cost: about 2 s once the shared engines are up (about 35 s to start them when no earlier test did).
"""

from __future__ import annotations

import pytest
import torch

from reward_server.tools import ToolSettings
from trainer.types import Prompt

pytestmark = pytest.mark.slow

MAX_TOKENS = 48
SETTINGS = ToolSettings(by_source=(("arithmetic", ("tests.tool_fixtures:Echo",)),), max_turns=4,
                        max_tool_output_tokens=8, timeout_s=30.0, workers=2)


def _runs(mask: tuple[bool, ...]) -> list[tuple[bool, int, int]]:
    """(policy?, start, end) of each run of equal mask values."""
    out: list[tuple[bool, int, int]] = []
    for t, m in enumerate(mask):
        if out and out[-1][0] == m:
            out[-1] = (m, out[-1][1], t + 1)
        else:
            out.append((m, t, t + 1))
    return out


def test_a_multi_turn_rollout_is_the_exact_concatenation_of_its_turns(tiny_engines):
    from transformers import AutoTokenizer, Qwen2ForCausalLM

    from actors.engine_group import EngineGroup

    # Both shared engines start now, together (tests/test_rollout.py reads the second): two starts side by
    # side cost less than one after the other.
    group = EngineGroup(tiny_engines.actors(2)[:1])
    prompts = [Prompt(index=i, text=f"What is {a}+{b}?", ground_truth=str(a + b), task=task)
               for i, (a, b, task) in enumerate([(12, 30, "arithmetic"), (405, 77, "arithmetic"), (9, 9, "math")])]

    def generate():
        return group.generate(prompts, n=4, temperature=1.0, top_p=1.0, max_tokens=MAX_TOKENS, stop=(), seed=7,
                              tools=SETTINGS)

    batch = generate()
    assert generate().completions == batch.completions, "the same seed must give the same multi-turn groups (an exact resume needs it)"

    tokenizer = AutoTokenizer.from_pretrained(tiny_engines.model_dir)
    output_ids = [t for text in ("[", "12", "]") for t in tokenizer.encode(text, add_special_tokens=False)]
    model = Qwen2ForCausalLM.from_pretrained(tiny_engines.model_dir, torch_dtype=torch.float32).eval()
    calls = 0
    for prompt, prompt_ids, completions in zip(batch.prompts, batch.prompt_token_ids, batch.completions, strict=True):
        for c in completions:
            if prompt.task != "arithmetic":  # no tools for this source: one turn, as without tools
                assert c.turns == 0 and c.loss_mask == () and c.tool_calls == 0
                continue
            assert len(c.token_ids) == len(c.loss_mask) == len(c.rollout_logprobs) <= MAX_TOKENS
            runs = _runs(c.loss_mask)
            tool_runs = [(s, e) for policy, s, e in runs if not policy]
            assert len(tool_runs) == c.tool_calls and c.turns in (c.tool_calls, c.tool_calls + 1)
            calls += c.tool_calls
            for s, e in tool_runs:  # each output exactly as tokenised, cut only by the response's budget
                assert list(c.token_ids[s:e]) == output_ids[: e - s] and (e - s == len(output_ids) or e == MAX_TOKENS)
                assert "e" in tokenizer.decode(c.token_ids[s - 1: s]), "a call ends at the tool's end marker"
                assert all(lp == 0.0 for lp in c.rollout_logprobs[s:e])
            ids = torch.tensor([list(prompt_ids) + list(c.token_ids)])
            with torch.no_grad():
                logits = model(ids).logits[0, :-1]                                            # [P + T - 1, V]
            learner = torch.log_softmax(logits.float(), -1).gather(-1, ids[0, 1:, None])[:, 0]  # [P + T - 1]
            response = learner[len(prompt_ids) - 1:]                                            # [T]
            policy = torch.tensor(c.loss_mask)
            vllm = torch.tensor(c.rollout_logprobs)
            assert torch.allclose(response[policy], vllm[policy], atol=2e-3), (response[policy] - vllm[policy]).abs().max()
    assert calls >= 4, "the random model writes 'e' often enough to call the tool in most responses"
