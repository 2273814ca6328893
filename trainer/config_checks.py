"""The checks behind `validate()`: each raises a `ConfigError` that names the field and what is allowed.

The bounds that are policies (the largest learning rate, the longest timeout) are named here with their
reasons; `trainer.config_train` and `trainer.config_stages` apply them to their own fields.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

from reward_server.config import ConfigError, RewardConfig

if TYPE_CHECKING:
    from _typeshed import DataclassInstance


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


TOP_P_REFUSED = (
    "rollout.sampling.top_p = {top_p} cannot be trained on: vLLM samples from the top-p nucleus renormalised and "
    "reports those logprobs, while the learner's (policy, old policy, reference) are over the whole vocabulary, "
    "so the importance ratio and the loss would be taken against a policy the samples did not come from. Use "
    "top_p = 1 (a temperature other than 1 is supported: the learner scales its logits by 1 / T)")
"""Training with top-p < 1 is refused rather than warned about (most peers warn): its loss is silently off."""

MAX_LR = 1.0
"""Largest accepted learning rate: Adam moves every parameter by about `lr` per step, so anything near 1
destroys a trained model in one step; a value above it is a typo (1e308 was accepted and ran)."""

MAX_TIMEOUT_S = 86_400.0
"""Longest accepted timeout (a day): longer ones overflow the waits they feed (`inf` did), or hang a run."""


def _check_output_dir(output_dir: str) -> None:
    """An empty `output_dir` would write the run into whatever directory the command was started from."""
    _require(bool(output_dir.strip()), f"output_dir = {output_dir!r}: must name a directory (e.g. runs)")


def _check_finite(obj: DataclassInstance | type[DataclassInstance], prefix: str) -> None:
    """Every float field of every section is finite: `inf` and NaN pass comparisons they should fail."""
    for f in dataclasses.fields(obj):
        value, key = getattr(obj, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            _check_finite(value, key + ".")
        for item in value if isinstance(value, tuple) else (value,):
            if isinstance(item, float) and not math.isfinite(item):
                raise ConfigError(f"{key} = {item}: must be a finite number")


def _in_range(key: str, value: float, low: float, high: float = math.inf, *, low_open: bool = False,
              high_open: bool = False) -> None:
    """`value` lies in the interval from `low` to `high`; the message names the field and the interval."""
    ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        hi = "inf)" if high == math.inf else f"{high:g}{')' if high_open else ']'}"
        raise ConfigError(f"{key} = {value!r} is out of range: allowed {'(' if low_open else '['}{low:g}, {hi}")


def check_reward(rw: RewardConfig, *, max_response_tokens: int) -> None:
    """Range of every field of the reward section, and a model for every scorer a source may be routed to."""
    for name in ("accuracy_weight", "format_weight", "language_weight", "overlong_weight"):
        _in_range(f"reward.{name}", getattr(rw, name), 0)
    _require(rw.accuracy_weight + rw.format_weight + rw.language_weight > 0,
             "reward.accuracy_weight, format_weight and language_weight are all 0: every reward would be 0")
    if rw.overlong_weight:
        _in_range("reward.overlong_buffer_tokens", rw.overlong_buffer_tokens, 0, max_response_tokens)
    _in_range("reward.timeout_s", rw.timeout_s, 0, MAX_TIMEOUT_S, low_open=True)
    _in_range("reward.max_error_fraction", rw.max_error_fraction, 0, 1)
    _in_range("reward.code.workers", rw.code.workers, 0)       # 0: the actor's CPUs
    if rw.code.case_wall_s is not None:
        _in_range("reward.code.case_wall_s", rw.code.case_wall_s, 0, MAX_TIMEOUT_S, low_open=True)
    if rw.code.memory_bytes is not None:
        _in_range("reward.code.memory_bytes", rw.code.memory_bytes, 1 << 24)  # an interpreter needs ~16 MiB
    _check_scorers(rw)


def _check_scorers(rw: RewardConfig) -> None:
    """The routes parse, and every scorer a source may be routed to has its model."""
    used, j, rm = rw.scorers_used(), rw.judge, rw.reward_model
    if "judge" in used:
        _require(bool(j.model_path), "reward.routes send a data source to the judge, but reward.judge.model_path "
                                     "is empty")
        _in_range("reward.judge.num_engines", j.num_engines, 1)
        _in_range("reward.judge.tensor_parallel_size", j.tensor_parallel_size, 1)
        _in_range("reward.judge.max_tokens", j.max_tokens, 1)
        _in_range("reward.judge.max_model_len", j.max_model_len, j.max_tokens + 1)
        _in_range("reward.judge.gpu_memory_utilization", j.gpu_memory_utilization, 0, 1, low_open=True)
        _in_range("reward.judge.cpu_kvcache_gib", j.cpu_kvcache_gib, 0, low_open=True)
        _in_range("reward.judge.weight", j.weight, 0, low_open=True)
        _in_range("reward.judge.timeout_s", j.timeout_s, 0, MAX_TIMEOUT_S, low_open=True)
    if "reward_model" in used:
        _require(bool(rm.helpfulness_path or rm.harmlessness_path),
                 "reward.routes send a data source to reward_model, but reward.reward_model.helpfulness_path "
                 "and harmlessness_path are both empty")
        for name in ("helpfulness", "harmlessness"):
            if getattr(rm, f"{name}_path"):
                _in_range(f"reward.reward_model.{name}_weight", getattr(rm, f"{name}_weight"), 0, low_open=True)
        _in_range("reward.reward_model.batch_size", rm.batch_size, 1)
        _in_range("reward.reward_model.max_tokens", rm.max_tokens, 1)
