"""The function task (examples/tasks.py): write f(x) in one line from f(0), f(1), f(2), scored by the `code`
verifier on hidden inputs. Its generator is seeded and exact, the reference completion passes the real
verifier (the program runs in the sandbox) and a completion with a wrong difference fails it, and the fast
check the base build uses agrees with the sandbox."""

from __future__ import annotations

import json
import random
import re

import pytest

from examples import tasks
from examples.tasks import FUNCTION
from reward_server.rewards import check_inline
from reward_server.scorers import build_routed_scorer
from reward_server.verifiers import extract_answer
from trainer.config import RewardConfig
from trainer.templates import r1_zero
from trainer.types import Completion, Prompt


def _item(example: tasks.TaskExample, completion: str) -> tuple[Prompt, Completion]:
    prompt = Prompt(index=0, text=r1_zero(example.prompt), ground_truth=example.ground_truth, task=example.task)
    return prompt, Completion(token_ids=(1,) * 8, text=completion, rollout_logprobs=(0.0,) * 8, finish_reason="stop")


def test_the_generator_is_seeded_distinct_and_splits_share_nothing():
    assert tasks.generate_function(50, 3) == tasks.generate_function(50, 3)
    assert tasks.generate_function(50, 3) != tasks.generate_function(50, 4)
    train, heldout = tasks.make_splits(FUNCTION, 1800, 200, 0)
    assert len({e.prompt for e in train + heldout}) == 2000  # every function once, none in both splits
    assert tasks.make_splits(FUNCTION, 100, 200, 0)[1] == heldout  # the held-out split does not move
    with pytest.raises(ValueError, match="2000 distinct"):
        tasks.generate_function(2001, 0)


def test_hidden_inputs_differ_from_the_shown_ones_and_match_the_function():
    for e in tasks.generate_function(300, 1):
        y = tasks.parse_function_question(e.prompt)
        (line,) = json.loads(e.ground_truth)["asserts"]
        xs, want = re.match(r"assert \[f\(x\) for x in \((.*)\)\] == \[(.*)\]$", line).groups()
        xs_ = [int(v) for v in xs.split(",")]
        assert len(xs_) == tasks.FUNCTION_HIDDEN_COUNT and not set(xs_) & set(tasks.FUNCTION_SHOWN)
        assert all(tasks.FUNCTION_HIDDEN_RANGE[0] <= x <= tasks.FUNCTION_HIDDEN_RANGE[1] for x in xs_)
        # the values follow from the shown ones: f = x*x*q + x*a + b with q from the second difference
        q = (y[2] - 2 * y[1] + y[0]) // 2
        a, b = y[1] - y[0] - q, y[0]
        assert [int(v) for v in want.split(",")] == [q * x * x + a * x + b for x in xs_]
        assert e.task == "code"


def test_reference_and_wrong_completions():
    e = tasks.TaskExample(tasks.function_question(1, 3, 49), tasks.function_ground_truth(1, 3, 49, [4, 9, 13, 17]),
                          FUNCTION)
    assert e.prompt == "Write f(x) in one line. f(0)=49, f(1)=53, f(2)=59."
    assert tasks.reference_completion(e) == ("53-49=4,59-53=6</think><answer>```python\ndef f(x): return "
                                             "x*x+x*3+49\n```</answer>")
    # a quadratic's second difference taken wrong: written equal to the first, the program is linear
    assert tasks.function_completion(e.prompt, wrong_step=1, wrong_delta=1).startswith("53-49=4,59-53=4</think>")
    assert tasks.function_expression(0, 1, 0) == "x" and tasks.function_expression(0, 0, 0) == "0"
    assert tasks.function_expression(1, 0, 7) == "x*x+7" and tasks.function_expression(0, 4, 0) == "x*4"


def test_every_wrong_step_gives_a_wrong_program():
    for e in tasks.generate_function(2000, 0):
        answer = extract_answer("<think>" + tasks.reference_completion(e))
        assert answer is not None and tasks.check_function_answer(answer, e.ground_truth), e.prompt
        for step in (0, 1):
            for delta in tasks.WRONG_DIFF_DELTAS:
                wrong = extract_answer("<think>" + tasks.function_completion(e.prompt, wrong_step=step,
                                                                             wrong_delta=delta))
                assert wrong is not None and not tasks.check_function_answer(wrong, e.ground_truth), (e.prompt, step)


def test_the_real_verifier_scores_the_reference_1_and_a_wrong_completion_0():
    examples = tasks.generate_function(6, 7)
    rng = random.Random(0)
    items = [_item(e, tasks.reference_completion(e)) for e in examples]
    items += [_item(e, tasks.function_completion(e.prompt, wrong_step=rng.randrange(2),
                                                 wrong_delta=rng.choice(tasks.WRONG_DIFF_DELTAS))) for e in examples]
    items += [_item(examples[0], "53-49=4</think><answer>def f(x): return x</answer>")]  # no fenced block
    scorer = build_routed_scorer(RewardConfig(verifier="code", format_weight=0.1), max_response_tokens=64,
                                 check=check_inline)
    try:
        results = scorer.score(items)
    finally:
        scorer.close()
    assert [r.correct for r in results] == [True] * 6 + [False] * 7
    assert [r.components["accuracy"] for r in results] == [1.0] * 6 + [0.0] * 7
    assert all(r.error is None for r in results)  # a wrong program is a wrong answer, not an error
    assert all(r.components["format"] == 1.0 for r in results[:12])
    # the fast check the base build evaluates with agrees with the sandbox
    for (prompt, completion), result in zip(items[:12], results[:12], strict=True):
        answer = extract_answer(prompt.text[-len("<think>"):] + completion.text)
        assert answer is not None and tasks.check_function_answer(answer, prompt.ground_truth) == result.correct


@pytest.mark.parametrize("program, passes", [
    ("def f(x): return x*x+x*3+49", True),
    ("def f(x): return 49+x*(x+3)", True),
    ("def f(x): return x*x+x*3+48", False),
    ("def f(x):\n    y = x\n    return y*y+y*3+49", False),  # runs fine, but outside what the fast check reads
    ("import os\ndef f(x): return x", False),
    ("def f(x): return x**2+x*3+49", False),
    ("def g(x): return x*x+x*3+49", False),
])
def test_the_fast_check_reads_only_arithmetic_of_x(program, passes):
    truth = tasks.function_ground_truth(1, 3, 49, [4, 9, 13, 17])
    assert tasks.check_function_answer(f"```python\n{program}\n```", truth) is passes
