"""Held-out accuracy of a (base) model with Hugging Face `generate`: sampled pass@1 and greedy.

    python -m examples.eval_base --model artifacts/tiny-qwen2 --k 4

pass@1 is the share of correct completions among k samples per prompt at temperature 1 (plain
sampling: no top-k, no top-p), averaged over prompts, as R1 reports it; greedy is one completion per
prompt with argmax decoding. Prompts are rendered with the R1-Zero template (or `--template`), generation
stops at EOS or "</answer>" (the demo's stop string), and answers are checked by the task's exact verifier
from `reward_server.verifiers` (the function task's program by `examples.tasks.check_function_answer`).
Batched generation with left padding, so every prompt ends at the same position.
"""

from __future__ import annotations

import os

# Passive OpenMP waiting: on a shared 2-core machine, spinning worker threads made a training step
# 10-50x slower whenever other processes competed for the cores. Must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from examples.tasks import ARITHMETIC, COUNTDOWN, FUNCTION, TaskExample, check_function_answer, read_jsonl
from reward_server.verifiers import extract_answer, verify_arithmetic, verify_countdown
from trainer.config import DataConfig, EvalConfig, ModelConfig
from trainer.templates import TEMPLATES

VERIFIERS: dict[str, Callable[[str, str], bool]] = {
    ARITHMETIC: verify_arithmetic, COUNTDOWN: verify_countdown, FUNCTION: check_function_answer}
"""Task name -> verifier(answer, ground_truth). The function task's is a fast check without running the
program (`examples.tasks.check_function_answer`); training scores it in the `code` sandbox."""
STOP_TEXT = "</answer>"
GENERATE_BATCH = 256
"""Sequences per `generate` call: large enough to keep 2 cores busy, small enough for memory."""


@dataclass(frozen=True)
class EvalResult:
    pass_at_1: float
    """Correct share of the k sampled completions, averaged over prompts (temperature as given)."""
    greedy: float
    """Correct share of the greedy completions."""
    num_prompts: int
    samples_per_prompt: int
    seconds: float


def is_correct(completion: str, example: TaskExample) -> bool:
    """The task's verifier on the completion's final answer; no answer counts as wrong."""
    answer = extract_answer(completion)
    return answer is not None and VERIFIERS[example.task](answer, example.ground_truth)


@torch.no_grad()
def generate(model, tokenizer, prompts: Sequence[str], *, temperature: float | None,
             max_new_tokens: int, batch_size: int = GENERATE_BATCH) -> list[str]:
    """One completion per prompt text; temperature None means greedy. Seed torch before calling."""
    stop_ids = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(STOP_TEXT)]
    sampling = {"do_sample": False} if temperature is None else {
        "do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
    tokenizer.padding_side = "left"
    texts = []
    for start in range(0, len(prompts), batch_size):
        enc = tokenizer(list(prompts[start:start + batch_size]), return_tensors="pt", padding=True)
        out = model.generate(**enc, max_new_tokens=max_new_tokens, eos_token_id=stop_ids,
                             pad_token_id=tokenizer.eos_token_id, **sampling)  # [b, P + T]
        completion_ids = out[:, enc["input_ids"].shape[1]:]  # [b, T]
        texts += tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
    return texts


def evaluate(model, tokenizer, examples: Sequence[TaskExample], *, k: int, temperature: float = 1.0,
             max_new_tokens: int = ModelConfig.max_response_tokens, seed: int = 0,
             template: str = "r1_zero") -> EvalResult:
    """Sampled pass@1 over k samples per prompt, and greedy accuracy, on `examples` prompted with `template`
    (`r1_zero`, or `r1_zero_readable` for a model fine-tuned on the readable format)."""
    t0 = time.perf_counter()
    was_training = model.training
    model.eval()
    prompts = [TEMPLATES[template](e.prompt) for e in examples]
    torch.manual_seed(seed)
    sampled = generate(model, tokenizer, [p for p in prompts for _ in range(k)],
                       temperature=temperature, max_new_tokens=max_new_tokens)
    greedy = generate(model, tokenizer, prompts, temperature=None, max_new_tokens=max_new_tokens)
    model.train(was_training)
    sampled_ok = [is_correct(c, examples[i // k]) for i, c in enumerate(sampled)]
    greedy_ok = [is_correct(c, e) for c, e in zip(greedy, examples)]
    return EvalResult(
        pass_at_1=sum(sampled_ok) / len(sampled_ok),
        greedy=sum(greedy_ok) / len(greedy_ok),
        num_prompts=len(examples),
        samples_per_prompt=k,
        seconds=time.perf_counter() - t0,
    )


def main(argv: Sequence[str] | None = None) -> EvalResult:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=ModelConfig.path, help="Hugging Face model directory")
    parser.add_argument("--data", default=DataConfig.eval_path, help="held-out JSONL")
    parser.add_argument("--n", type=int, default=DataConfig.eval_size, help="first n held-out prompts")
    parser.add_argument("--k", type=int, default=EvalConfig.samples_per_prompt, help="samples per prompt")
    parser.add_argument("--temperature", type=float, default=EvalConfig.temperature)
    parser.add_argument("--max-new-tokens", type=int, default=ModelConfig.max_response_tokens)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--template", default="r1_zero", choices=("r1_zero", "r1_zero_readable"),
                        help="prompt layout (r1_zero_readable: the R1 pipeline's readable stages)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args(argv)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    examples = list(read_jsonl(args.data))[:args.n]
    result = evaluate(model, tokenizer, examples, k=args.k, temperature=args.temperature,
                      max_new_tokens=args.max_new_tokens, seed=args.seed, template=args.template)
    print(f"{args.model} on {args.data}: {result.num_prompts} prompts, k={result.samples_per_prompt}, "
          f"template {args.template}, seed {args.seed}")
    print(f"  pass@1 (temperature {args.temperature:g}, mean over k): {result.pass_at_1:.1%}")
    print(f"  greedy accuracy:                       {result.greedy:.1%}")
    print(f"  ({result.seconds:.1f} s)")
    return result


if __name__ == "__main__":
    main()
