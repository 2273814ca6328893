"""The shape of a model, as the memory plan and the weight-sync deadline need it: from `config.json` in
`model.path` when that directory exists; otherwise from `KNOWN_SHAPES` (the published configs of the models
the examples use), looked up by the model directory's name, else by the example's name through
`EXAMPLE_MODELS` (for a model an earlier stage writes). Neither is a `PlanError` that lists the known names."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}

class PlanError(ValueError):
    """The plan cannot be computed (no model shape); the message says what to provide."""



@dataclass(frozen=True)
class ModelShape:
    """What memory depends on, in Hugging Face `config.json` terms (a Qwen2-style decoder)."""

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tie_word_embeddings: bool
    qkv_bias: bool = True

    @classmethod
    def from_hf_config(cls, config: dict[str, Any]) -> ModelShape:
        heads = int(config["num_attention_heads"])
        return cls(
            hidden_size=int(config["hidden_size"]), num_layers=int(config["num_hidden_layers"]),
            num_heads=heads, num_kv_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or config["hidden_size"] // heads),
            intermediate_size=int(config["intermediate_size"]), vocab_size=int(config["vocab_size"]),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            qkv_bias=config.get("model_type", "qwen2") == "qwen2" or bool(config.get("attention_bias", False)),
        )

    @property
    def layer_params(self) -> int:
        """One decoder layer: q, k, v (with bias in Qwen2), o, gate, up, down, two RMSNorms."""
        h, q, kv = self.hidden_size, self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        attention = h * (q + 2 * kv) + q * h + ((q + 2 * kv) if self.qkv_bias else 0)
        return attention + 3 * h * self.intermediate_size + 2 * h

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def num_params(self) -> int:
        output = 0 if self.tie_word_embeddings else self.embedding_params
        return self.num_layers * self.layer_params + self.embedding_params + output + self.hidden_size

    def describe(self) -> str:
        return (f"{self.num_params / 1e9:.3g}B parameters: hidden {self.hidden_size}, {self.num_layers} layers, "
                f"{self.num_heads} heads ({self.num_kv_heads} KV) x {self.head_dim}, MLP {self.intermediate_size}, "
                f"vocab {self.vocab_size}, {'tied' if self.tie_word_embeddings else 'untied'} embeddings")


KNOWN_SHAPES: dict[str, ModelShape] = {
    # Published config.json of each model (huggingface.co/Qwen/<name>), for plans made without the files.
    "Qwen2.5-0.5B": ModelShape(896, 24, 14, 2, 64, 4864, 151936, True),
    "Qwen2.5-1.5B": ModelShape(1536, 28, 12, 2, 128, 8960, 151936, True),
    "Qwen2.5-7B": ModelShape(3584, 28, 28, 4, 128, 18944, 152064, False),
    "Qwen2.5-Math-7B": ModelShape(3584, 28, 28, 4, 128, 18944, 152064, False),
    "Qwen2.5-Coder-7B-Instruct": ModelShape(3584, 28, 28, 4, 128, 18944, 152064, False),
    "Qwen2.5-7B-Instruct": ModelShape(3584, 28, 28, 4, 128, 18944, 152064, False),
    # examples/build_tiny.py's defaults; the vocabulary is its BPE limit plus the four tags (an upper bound).
    "tiny-qwen2": ModelShape(128, 4, 2, 2, 64, 384, 1028, True),
    # examples/build_student.py: the distillation student, every other layer of tiny-qwen2 pretrained further
    "tiny-student": ModelShape(128, 2, 2, 2, 64, 384, 1028, True),
    # examples/build_tiny_code.py: the code task's base, tiny-qwen2's shape with a BPE limit of 512
    "tiny-qwen2-code": ModelShape(128, 4, 2, 2, 64, 384, 516, True),
    # examples/build_tiny_reflect.py: the self-evolution base, tiny-qwen2's shape and BPE limit
    "tiny-qwen2-reflect": ModelShape(128, 4, 2, 2, 64, 384, 1028, True),
    # examples/build_tiny_tool.py: the tool base, tiny-qwen2's shape; its BPE limit, the four tags and the
    # calculator's four markers
    "tiny-qwen2-tool": ModelShape(128, 4, 2, 2, 64, 384, 1032, True),
}
"""Model directory name -> shape, used when `model.path` holds no config.json."""

EXAMPLE_MODELS: dict[str, str] = {
    "tiny_cpu": "tiny-qwen2",
    "tiny_cpu_r1_rl": "tiny-qwen2",  # starts from the cold-start SFT of the tiny model
    "tiny_cpu_distill": "tiny-student",
    "qwen25_gsm8k_r1_zero": "Qwen2.5-1.5B",
    "qwen25_math_r1_zero": "Qwen2.5-7B",
}
"""Example name -> the `KNOWN_SHAPES` entry of its model, for a model path that names no known model."""


def model_shape(model_path: str, example: str = "") -> tuple[ModelShape, str]:
    """The shape of the model at `model_path` (of example `example`) and where it came from."""
    config = Path(model_path) / "config.json"
    if config.is_file():
        return ModelShape.from_hf_config(json.loads(config.read_text())), str(config)
    name = Path(model_path).name
    if name in KNOWN_SHAPES:
        return KNOWN_SHAPES[name], f"known shape of {name!r} ({config} not found)"
    if example in EXAMPLE_MODELS:
        known = EXAMPLE_MODELS[example]
        return KNOWN_SHAPES[known], f"known shape of {known!r}, the model of example {example!r} ({config} not found)"
    raise PlanError(f"{config} not found, and neither {name!r} nor example {example!r} is in trainer.plan's "
                    f"KNOWN_SHAPES ({', '.join(KNOWN_SHAPES)}) or EXAMPLE_MODELS: point model.path at the "
                    f"model directory, or add its shape")
