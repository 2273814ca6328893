"""Multi-turn rollouts with tools: the rollout worker's generation when a prompt's data source has tools.

One sample, turn by turn (each sample of a group runs on its own, concurrently with the others):

    ids = []                                            token ids of the response so far
    turn t: vLLM continues TokensPrompt(prompt_ids + ids), stopping at any tool's `call_end`
            ids += the turn's sampled ids                loss mask 1, vLLM's logprobs
            a call ends the turn? -> the tool runs in a tool process (`reward_server.tool_runner`,
            deadline `timeout_s`, never in this process); ids += tokens of
            output_start + output + output_end           loss mask 0, logprob 0
    until no call, `max_turns` turns, or `max_tokens` response tokens in all (the total budget)

The response's token ids are the concatenation of the turns exactly as sampled and appended: the prefix
of each turn is fed back as token ids, never as text, so nothing is re-tokenised between turns. Only the
tool outputs are tokenised, once, and cut to `max_tool_output_tokens` (both markers kept). Each turn
is a request of n = 1 with its own seed, derived from the prompt's seed, the sample and the turn, so a
group repeats exactly on any engine (and after a resume).
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from reward_server.tool_runner import ToolRunner
from reward_server.tools import Tool, ToolSettings, call_end, find_call, output_markers, tool_class
from trainer.types import Completion

if TYPE_CHECKING:
    from vllm.outputs import RequestOutput


def turn_seed(seed: int | None, sample: int, turn: int) -> int | None:
    """Seed of one turn of one sample of a prompt whose seed is `seed`."""
    return None if seed is None else (seed * 1_000_003 + sample * 7919 + turn) % 2**31


@dataclass
class _Response:
    """A response being built, turn by turn."""

    ids: list[int] = field(default_factory=list)
    mask: list[bool] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    turns: int = 0
    calls: int = 0
    finish_reason: str = "stop"

    def add(self, ids: list[int], logprobs: list[float], text: str, *, policy: bool) -> None:
        self.ids += ids
        self.mask += [policy] * len(ids)
        self.logprobs += logprobs
        self.text.append(text)
        if not policy:
            self.outputs.append(text)

    def completion(self) -> Completion:
        return Completion(token_ids=tuple(self.ids), text="".join(self.text), rollout_logprobs=tuple(self.logprobs),
                          finish_reason=self.finish_reason, loss_mask=tuple(self.mask), turns=self.turns,
                          tool_calls=self.calls, tool_errors=tuple(self.errors), tool_outputs=tuple(self.outputs))


class MultiTurn:
    """Multi-turn generation on one engine; the tool processes start on first use and live until `close`."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self._runner: ToolRunner | None = None
        self._runner_key: tuple[Any, ...] = ()

    def runner(self, settings: ToolSettings) -> ToolRunner:
        key = (settings.all_tools(), settings.workers, settings.timeout_s)
        if self._runner is None or key != self._runner_key:
            self.close()
            self._runner, self._runner_key = ToolRunner(key[0], workers=settings.workers,
                                                        timeout_s=settings.timeout_s), key
        return self._runner

    def close(self) -> None:
        if self._runner is not None:
            self._runner.close()
            self._runner = None

    async def generate(self, prompt_ids: list[int], specs: tuple[str, ...], settings: ToolSettings, *, n: int,
                       temperature: float, top_p: float, max_tokens: int, stop: list[str], seed: int | None
                       ) -> tuple[Completion, ...]:
        """The n completions of one prompt (already tokenised), in sample order."""
        tools = {spec: tool_class(spec) for spec in specs}
        runner = self.runner(settings)
        return tuple(await asyncio.gather(*(
            self._sample(prompt_ids, tools, runner, settings, temperature=temperature, top_p=top_p,
                         max_tokens=max_tokens, stop=stop, seed=seed, sample=g) for g in range(n))))

    async def _sample(self, prompt_ids: list[int], tools: dict[str, type[Tool]], runner: ToolRunner,
                      settings: ToolSettings, *, temperature: float, top_p: float, max_tokens: int,
                      stop: list[str], seed: int | None, sample: int) -> Completion:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        from actors.rollout import _sampled_logprob

        tokenizer = self.engine.get_tokenizer()
        call_ends = sorted({call_end(spec, t) for spec, t in tools.items()})
        r = _Response()
        while len(r.ids) < max_tokens:
            r.turns += 1
            params = SamplingParams(
                n=1, temperature=temperature, top_p=top_p, max_tokens=max_tokens - len(r.ids),
                stop=stop + call_ends, include_stop_str_in_output=True, seed=turn_seed(seed, sample, r.turns),
                logprobs=0, output_kind=RequestOutputKind.FINAL_ONLY)
            final: RequestOutput | None = None
            async for out in self.engine.generate(TokensPrompt(prompt_token_ids=prompt_ids + r.ids), params,
                                                  request_id=uuid.uuid4().hex):
                final = out
            assert final is not None and len(final.outputs) == 1, "vLLM returned no completion"
            c = final.outputs[0]
            assert c.logprobs is not None, "vLLM returned no logprobs (SamplingParams(logprobs=0) asks for them)"
            ids = list(c.token_ids)
            r.add(ids, [_sampled_logprob(step, tok) for tok, step in zip(ids, c.logprobs)], c.text, policy=True)
            r.finish_reason = str(c.finish_reason)
            call = find_call(c.text, tools) if c.stop_reason in call_ends else None
            if call is None or r.turns >= settings.max_turns:
                break
            r.calls += 1
            outcome = await asyncio.to_thread(runner.call, *call)
            if outcome.error is not None:
                r.errors.append(outcome.error)
            out_ids = _output_ids(tokenizer, output_markers(call[0], tools[call[0]]), outcome.output,
                                  settings.max_tool_output_tokens)
            out_ids = out_ids[: max_tokens - len(r.ids)]
            r.add(out_ids, [0.0] * len(out_ids), tokenizer.decode(out_ids), policy=False)
        if len(r.ids) >= max_tokens and r.mask and not r.mask[-1]:
            r.finish_reason = "length"  # the budget ended inside a tool output
        return r.completion()


def _output_ids(tokenizer: Any, markers: tuple[str, str], output: str, limit: int) -> list[int]:
    """Token ids of the start marker, output, end marker (each tokenised on its own, so both markers stay
    whole), the output cut so that all fit in `limit`."""
    start, body, end = (tokenizer.encode(text, add_special_tokens=False) for text in (markers[0], output, markers[1]))
    return start + body[: max(0, limit - len(start) - len(end))] + end
