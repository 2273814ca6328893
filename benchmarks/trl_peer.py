"""The peer: TRL's `GRPOTrainer` on the setup `benchmarks.peer` hands it (same base model, data, template,
reward, batch, lengths, learning rate, clip, KL weight and evaluation as the grpo-ray run beside it).

    benchmarks/.venv/bin/python -m benchmarks.trl_peer --setup runs/bench/peer-demo/setup.json --out DIR

Runs in the benchmark's own virtual environment (`make bench` creates benchmarks/.venv with trl==1.16.0);
the repository's pure modules (templates, data, reward functions) are imported from the working tree.
Writes DIR/metrics.jsonl in grpo-ray's format: a `train` row per step (`time/step`, `completion_tokens`,
`reward`) and an `eval` row (`pass@1`) at step 0, every `eval_every` steps and at the end.

Where it must differ from grpo-ray: generation is transformers' `generate` in the training process (TRL
without vLLM; vLLM's CPU build is not in this environment), the verifier runs in-process (grpo-ray runs it
in reward actors), and the prompt order is TRL's own shuffle of the same data.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch


def reward_function(setup: dict[str, Any]):
    """TRL reward function from the repository's RewardFn: the weighted sum grpo-ray's reward actors give."""
    from reward_server.rewards import build_reward_fn, check_inline
    from trainer.config import RewardConfig
    from trainer.types import Completion, Prompt

    score = build_reward_fn(RewardConfig(**setup["reward"]), max_response_tokens=setup["max_response_tokens"],
                            check=check_inline)

    def arithmetic_reward(prompts, completions, completion_ids, ground_truth, **_: Any) -> list[float]:
        out = []
        for p, c, ids, truth in zip(prompts, completions, completion_ids, ground_truth, strict=True):
            prompt = Prompt(index=0, text=p, ground_truth=truth, task=setup["reward"]["verifier"])
            out.append(score(prompt, Completion(token_ids=tuple(ids), text=c, rollout_logprobs=(),
                                                finish_reason="stop")).reward)
        return out

    return score, arithmetic_reward


def stop_token_ids(tokenizer) -> list[int]:
    """EOS, plus each stop string that is one token (`</answer>` in the tiny tokenizer), like vLLM's stop."""
    ids = [tokenizer.eos_token_id]
    for s in ("</answer>",):
        tid = tokenizer.convert_tokens_to_ids(s)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid not in ids:
            ids.append(tid)
    return ids


@torch.no_grad()
def evaluate(model, tokenizer, prompts, score, setup: dict[str, Any]) -> float:
    """Held-out pass@1: k samples per prompt at the eval temperature, mean correctness."""
    from trainer.types import Completion

    k, was_training = setup["eval_samples"], model.training
    model.eval()
    tokenizer.padding_side = "left"
    enc = tokenizer([p.text for p in prompts], return_tensors="pt", padding=True)
    torch.manual_seed(setup["seed"])
    out = model.generate(**enc, do_sample=True, temperature=setup["eval_temperature"], top_p=1.0,
                         max_new_tokens=setup["max_response_tokens"], num_return_sequences=k,
                         eos_token_id=stop_token_ids(tokenizer), pad_token_id=tokenizer.pad_token_id)
    completions = out[:, enc["input_ids"].shape[1]:]
    correct = 0
    for i, ids in enumerate(completions.tolist()):
        prompt = prompts[i // k]
        text = tokenizer.decode(ids, skip_special_tokens=True)
        correct += score(prompt, Completion(token_ids=tuple(ids), text=text, rollout_logprobs=(),
                                            finish_reason="stop")).correct
    model.train(was_training)
    return correct / len(completions)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--setup", required=True, help="JSON written by benchmarks.peer")
    ap.add_argument("--out", required=True, help="run directory (metrics.jsonl goes there)")
    args = ap.parse_args()
    setup = json.loads(Path(args.setup).read_text())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from trainer.data import load_prompts

    tokenizer = AutoTokenizer.from_pretrained(setup["model_path"])
    train = load_prompts(setup["train_path"], template=setup["template"], default_task=setup["reward"]["verifier"])
    heldout = load_prompts(setup["eval_path"], template=setup["template"], default_task=setup["reward"]["verifier"],
                           limit=setup["eval_size"])
    dataset = Dataset.from_list([{"prompt": p.text, "ground_truth": p.ground_truth} for p in train])
    score, reward = reward_function(setup)
    model = AutoModelForCausalLM.from_pretrained(setup["model_path"], dtype=torch.float32)
    n = setup["prompts_per_step"] * setup["group_size"]
    micro = min(n, setup["microbatch"])
    if n % micro:
        raise SystemExit(f"{n} completions per step do not split into micro-batches of {micro}")
    config = GRPOConfig(
        output_dir=str(out / "trl"), max_steps=setup["steps"], per_device_train_batch_size=micro,
        gradient_accumulation_steps=n // micro, steps_per_generation=n // micro,
        num_generations=setup["group_size"], max_completion_length=setup["max_response_tokens"],
        learning_rate=setup["lr"], lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        max_grad_norm=setup["grad_clip"], beta=setup["kl_coef"], epsilon=setup["clip_eps_low"],
        epsilon_high=setup["clip_eps_high"], temperature=setup["temperature"], top_p=1.0, loss_type="dapo",
        num_iterations=1, logging_steps=1, save_strategy="no", report_to="none",
        use_cpu=True, bf16=False, seed=setup["seed"], disable_dropout=True,
        generation_kwargs={"eos_token_id": stop_token_ids(tokenizer)},
    )
    metrics = (out / "metrics.jsonl").open("w")

    def log(row: dict[str, Any]) -> None:
        metrics.write(json.dumps(row) + "\n")
        metrics.flush()

    def log_eval(step: int) -> None:
        log({"step": step, "kind": "eval", "pass@1": evaluate(model, tokenizer, heldout, score, setup)})

    class Timing(TrainerCallback):
        """Seconds of each optimizer step (generation, scoring, logprobs, update); evaluation excluded."""

        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.seconds = time.perf_counter() - self.start

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            if "completions/mean_length" not in logs:
                return
            step = state.global_step
            log({"step": step, "kind": "train", "time/step": self.seconds,
                 "completion_tokens": logs["completions/mean_length"] * n, "reward": logs.get("reward"),
                 "response_length_mean": logs["completions/mean_length"]})
            every = setup["eval_every"]
            if every and step % every == 0 or step == setup["steps"]:
                log_eval(step)

    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=config, train_dataset=dataset,
                          processing_class=tokenizer, callbacks=[Timing()])
    log_eval(0)
    trainer.train()
    metrics.close()


if __name__ == "__main__":
    main()
