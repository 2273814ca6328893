"""`examples/gpu_check.py` as CI runs it (--cpu-smoke: tiny shapes on the CPU), and on a GPU when there is one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CHECKS = {"distributed_optimizer", "logprobs_vs_transformers", "step_moves_fp32_main_weights", "offload_onload",
          "dp_reduction_device",
          "step_vs_fp32_reference", "forward_backward_throughput", "no_ray_no_vllm", "bf16_steps",
          "fp16_steps_with_loss_scaler", "packed_logprobs_equal_padded", "packing_throughput_packed",
          "packing_throughput_padded_by_count", "packing_throughput_padded_by_budget"}


def _run(tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "gpu_check.json"
    done = subprocess.run([sys.executable, "-m", "examples.gpu_check", *args, "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    print(done.stdout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "FAIL" not in done.stdout
    return json.loads(out.read_text())


@pytest.mark.slow
def test_gpu_check_cpu_smoke_passes_every_check(tmp_path):
    figures = _run(tmp_path, "--cpu-smoke")
    assert CHECKS <= set(figures) and figures["failed"] == []
    assert figures["step_moves_fp32_main_weights"]["moved_fraction"] > 0.9
    assert figures["forward_backward_throughput"]["tokens_per_s"] > 0
    assert figures["offload_onload"]["bit_identical"] and figures["offload_onload"]["freed_gib"] > 0
    assert figures["fp16_steps_with_loss_scaler"]["scaler_state"]["scale"] > 1
    assert figures["packed_logprobs_equal_padded"]["max_abs_diff"] < 0.02  # bf16, another kernel's rounding
    assert figures["packing_throughput_packed"]["computed_tokens"] == figures["packing_throughput_packed"]["real_tokens"]
    assert figures["cuda_ipc_round_trip"]["skipped"]  # two processes on one GPU: nothing to share on a CPU


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_check_on_gpu(tmp_path):
    figures = _run(tmp_path)
    assert {"cuda_rng_tracker", "peak_memory", "nccl_abort_rebuild"} | CHECKS <= set(figures)
    ipc = figures["cuda_ipc_round_trip"]
    assert ipc["ok"] and ipc["identical"] and ipc["buckets"] > 1 and "skipped" not in ipc
