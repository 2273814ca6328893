"""Per-step metrics: one JSON line per step, TensorBoard scalars, and the R1-Zero curves as a PNG.

Files in the run directory:
  metrics.jsonl   {"step": s, "kind": "train" | "eval", ...} one line per step or evaluation
  tb/             TensorBoard events (same numbers)
  curves.png      held-out accuracy, mean response length, reflection words and the chain of thought's
                  language mix against steps
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cluster.untyped import JsonValue

if TYPE_CHECKING:
    from matplotlib.axes import Axes

log = logging.getLogger(__name__)


class MetricsLogger:
    """Appends metrics to metrics.jsonl and TensorBoard. Safe to reopen on resume."""

    def __init__(self, run_dir: str | Path, *, tensorboard: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / "metrics.jsonl"
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.run_dir / "tb"))

    def log(self, step: int, kind: str, values: Mapping[str, object]) -> None:
        record = {"step": step, "kind": kind, **{k: _plain(v) for k, v in values.items()}}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for key, value in record.items():
                if key not in ("step", "kind") and isinstance(value, int | float) and math.isfinite(value):
                    self._tb.add_scalar(f"{kind}/{key}", value, step)
            self._tb.flush()

    def truncate_after(self, step: int) -> None:
        """Drop lines of steps after `step` (a resumed run rewrites them). A line that does not parse
        (the partial last line of a run killed mid-write) is dropped with a warning, not fatal."""
        if not self.path.exists():
            return
        kept = [row for row in _parse_lines(self.path) if row[1]["step"] <= step]
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line, _ in kept))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _plain(value: object) -> JsonValue:
    if hasattr(value, "item"):
        return value.item()
    return value


def read_metrics(run_dir: str | Path, kind: str | None = None) -> list[dict[str, JsonValue]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    rows = [row for _, row in _parse_lines(path)]
    return [r for r in rows if kind is None or r["kind"] == kind]


def _parse_lines(path: Path) -> list[tuple[str, dict[str, JsonValue]]]:
    """(line, record) of each well-formed line; a malformed one is skipped with a warning naming it."""
    out = []
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get("step"), int):
                raise ValueError("not a metrics record with an integer step")
        except ValueError as exc:
            last = number == len(lines) and not text.endswith("\n")
            why = "partial last line (a run stopped while writing it)" if last else str(exc)
            log.warning("%s:%d: dropping a malformed line, %s: %.80r", path, number, why, line)
            continue
        out.append((line, row))
    return out


def plot_curves(run_dir: str | Path) -> Path:
    """The R1-Zero figures against steps: held-out pass@1 / pass@k / cons@k, mean response length, reflection
    (words per response and the share of responses with any), the accuracy of responses with and without
    reflection, and the language mix of the chain of thought (`trainer.analytics`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    evals = read_metrics(run_dir, "eval")
    train = read_metrics(run_dir, "train")
    fig, axes = plt.subplots(3, 2, figsize=(11, 12))
    (ax_acc, ax_len), (ax_refl, ax_paid), (ax_lang, ax_spare) = axes
    ax_spare.axis("off")
    if evals:
        steps = [r["step"] for r in evals]
        ax_acc.plot(steps, [r["pass@1"] for r in evals], marker="o", label="pass@1 (mean over k samples)")
        ax_acc.plot(steps, [r["cons@k"] for r in evals], marker="s", label="cons@k (majority vote)")
        k = int(evals[-1].get("k", 0))
        if f"pass@{k}" in evals[-1]:
            _series(ax_acc, evals, f"pass@{k}", f"pass@{k} (a correct one among k)", marker="^")
    if train:
        ax_acc.plot([r["step"] for r in train], [r["accuracy"] for r in train], alpha=0.3,
                    label="training-batch accuracy")
        ax_len.plot([r["step"] for r in train], [r["response_length_mean"] for r in train], label="training")
    if evals:
        ax_len.plot([r["step"] for r in evals], [r["response_length_mean"] for r in evals], marker="o",
                    label="held-out")
    _series(ax_refl, train, "reflection_words_per_response", "training")
    _series(ax_refl, evals, "reflection_words_per_response", "held-out", marker="o")
    _series(ax_refl, train, "reflection_frac", "training: share with any", alpha=0.5)
    _series(ax_refl, evals, "reflection_frac", "held-out: share with any", marker="s")
    _series(ax_paid, evals, "reflection_accuracy_with", "held-out, with reflection", marker="o")
    _series(ax_paid, evals, "reflection_accuracy_without", "held-out, without", marker="s")
    _series(ax_paid, train, "reflection_accuracy_with", "training, with reflection", alpha=0.4)
    _series(ax_paid, train, "reflection_accuracy_without", "training, without", alpha=0.4)
    worded = [r for r in train if r.get("cot_words_per_response", 1.0) > 0]  # shares of no words are not 0%
    for lang in ("en", "zh", "other"):
        _series(ax_lang, worded, f"cot_lang/{lang}", f"{lang} words", marker=".")
    _series(ax_lang, worded, "cot_mixed_frac", "chains mixing languages", linestyle="--")
    ax_acc.set(xlabel="step", ylabel="accuracy", title="Held-out accuracy", ylim=(0, 1))
    ax_len.set(xlabel="step", ylabel="tokens", title="Mean response length")
    ax_refl.set(xlabel="step", ylabel="per response / share", title='Reflection ("wait", "verify", ...)')
    ax_paid.set(xlabel="step", ylabel="accuracy", title="Accuracy of responses with vs without reflection",
                ylim=(0, 1.02))
    ax_lang.set(xlabel="step", ylabel="share", title="Chain-of-thought language mix (steps with words)",
               ylim=(0, 1.02))
    for ax in axes.flat:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(run_dir) / "curves.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _series(ax: Axes, rows: list[dict[str, JsonValue]], key: str, label: str, **style: Any) -> None:
    """Plot `key` against step for the rows that have it (older runs' lines lack the newer metrics)."""
    points = [(r["step"], r[key]) for r in rows if key in r]
    if points:
        ax.plot([s for s, _ in points], [v for _, v in points], label=label, **style)
