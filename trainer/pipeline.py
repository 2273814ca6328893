"""The multi-stage R1 recipe (arXiv:2501.12948, section 2.3-2.4) as one job: stages chained from one config.

    python -m trainer pipeline --example r1_tiny [--quick]

    base --derive--> base + the readable format's marker as one token
         --sft (cold start)--> --grpo (reasoning RL)--> --reject (k samples, correct + filtered kept)-->
         --sft (the base on the sampled data)--> --grpo (RL for all scenarios, reward chosen per source)
    student (a smaller pretrained model) --derive--> + the marker
         --sft on the teacher's samples (distillation)
         --grpo directly, on as many sequences (the comparison)

Each stage is one of four kinds, run through the same entry points as the commands: `derive`
(`trainer.pipeline_models.derive_model`: extra tokens, fewer layers), `sft` (`trainer.sft.train_sft`), `grpo`
(`trainer.controller.train`) and `reject` (`trainer.rejection.run_rejection`). A stage's config names its inputs by path, so the
example function that builds a `PipelineConfig` wires each stage to the outputs of earlier ones.

Stamps: when a stage finishes it writes `output_dir/<stage>/stage.json` with a hash of its config (for a
derive stage, also of the model files it copies) chained with the hash of the stage before it. A rerun skips every stage whose stamp matches and whose output
exists, and runs the first one that does not and every stage after it (they read its new output); since
the hashes chain, a changed config reruns its stage and every stage after it too. The held-out evaluation of a stage's model is stamped the same way (with the
evaluation config in the hash), so a rerun does not repeat it either.

The stage table (`output_dir/pipeline.json`, printed at the end): held-out pass@1 (temperature 1, mean
over k samples), cons@k (majority vote over the k answers) and mean response length in tokens for every
evaluated model, the rejection-sampling report, and the distillation comparison (the student's base, its
SFT on the teacher's samples, its GRPO run, with the sequences each trained on).

Ray: the first stage that needs it starts Ray (`cluster.ray_init.init_ray`, with the stages' cluster address)
and the pipeline stops it at the end; each stage's own `init_ray` joins it and its `shutdown_ray` leaves it
running (the two nest), while the stage still starts and stops its own actors, engines and placement group.

Departures from R1: evaluation runs with plain transformers `generate` (`trainer.pipeline_models`) (the models here are tiny; a
GPU pipeline would evaluate on the rollout engines); the stages run one after another, each starting its
own actors, rather than on long-lived ones; "compute" for the student comparison is counted
in sequences through the learner (SFT: samples x epochs; GRPO: steps x prompts x group size), not FLOPs.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Literal, TypedDict, TypeVar, cast

from trainer.config import ClusterConfig, RejectionConfig, SFTConfig, TrainConfig, to_dict
from trainer.pipeline_models import (
    DeriveConfig,
    EvalRecord,
    PipelineEvalConfig,
    StageRecord,
    derive_model,
    evaluate_model,
)

StageKind = Literal["derive", "sft", "grpo", "reject"]


class RejectionReport(TypedDict):
    """The part of a rejection stage's report.json (`trainer.rejection.Selection.report`) the table shows."""

    prompts: int
    samples: int
    kept: int
    dropped: dict[str, int]
    """Reason -> samples dropped for it."""


StageConfig = DeriveConfig | SFTConfig | TrainConfig | RejectionConfig
"""What a stage runs, by its kind: derive, sft, grpo, reject."""


@dataclass(frozen=True)
class Stage:
    name: str
    """Also the stage's directory under the pipeline's output_dir."""
    kind: StageKind
    config: StageConfig
    """`DeriveConfig`, `SFTConfig`, `TrainConfig` (grpo) or `RejectionConfig`."""
    template: str = ""
    """Template the held-out evaluation prompts this stage's model with ('': do not evaluate it)."""


@dataclass(frozen=True)
class PipelineConfig:
    name: str
    output_dir: str
    """Stages write to output_dir/<stage name>; the table to output_dir/pipeline.json."""
    stages: tuple[Stage, ...]
    eval: PipelineEvalConfig
    baselines: tuple[tuple[str, str, str], ...] = ()
    """(label, model path, template): models evaluated beside the stages' (the bases)."""
    student: tuple[str, str, str] = ("", "", "")
    """(student base label, distillation stage, student GRPO stage) for the comparison ('': none)."""


def stage_output(stage: Stage) -> str:
    """Where a stage writes its model or data set (what later stages' configs name)."""
    cfg = stage.config
    leaf = {"derive": "hf", "sft": "hf", "grpo": "model", "reject": "sft.jsonl"}[stage.kind]
    return str(Path(cfg.output_dir) / cfg.name / leaf)


# --- stamps ----------------------------------------------------------------------------------------


def config_hash(cfg: StageConfig | PipelineEvalConfig | Mapping[str, str], previous: str) -> str:
    """sha256 of the config (as JSON) chained with the previous stage's hash."""
    text = json.dumps(cfg if isinstance(cfg, Mapping) else to_dict(cfg), sort_keys=True, default=str)
    return hashlib.sha256((text + previous).encode()).hexdigest()


def read_stamp(stage_dir: Path, digest: str) -> StageRecord | None:
    """The stage's stamp if it matches `digest` and the output it names still exists, else None."""
    stamp = stage_dir / "stage.json"
    if not stamp.exists():
        return None
    record: StageRecord = json.loads(stamp.read_text())
    output = record.get("model") or record.get("data")
    if record.get("hash") != digest or not isinstance(output, str) or not Path(output).exists():
        return None
    return record


def write_stamp(stage_dir: Path, record: StageRecord) -> StageRecord:
    stage_dir.mkdir(parents=True, exist_ok=True)
    tmp = stage_dir / "stage.json.tmp"
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(stage_dir / "stage.json")
    return record


# --- the stages --------------------------------------------------------------------------------------


def run_sft_stage(cfg: SFTConfig) -> StageRecord:
    from trainer.metrics import read_metrics
    from trainer.sft import summary, train_sft

    run_dir = train_sft(replace(cfg, resume=False))
    sequences = sum(int(m["samples"]) for m in read_metrics(run_dir, "train"))
    return {"model": str(run_dir / "hf"), "sequences": sequences, **summary(run_dir)}


def run_grpo_stage(cfg: TrainConfig) -> StageRecord:
    from trainer.controller import train
    from trainer.metrics import read_metrics

    shutil.rmtree(Path(cfg.output_dir) / cfg.name, ignore_errors=True)  # a changed stage starts over
    run_dir = train(cfg)
    evals = read_metrics(run_dir, "eval")
    trains = read_metrics(run_dir, "train")
    a = cfg.algorithm
    return {"model": str(run_dir / "model"), "steps": len(trains),
            "sequences": len(trains) * a.prompts_per_step * a.group_size,
            "reward_start": trains[0].get("reward") if trains else None,
            "reward_end": trains[-1].get("reward") if trains else None,
            "engine_pass@1_start": evals[0]["pass@1"] if evals else None,
            "engine_pass@1_end": evals[-1]["pass@1"] if evals else None}


def run_reject_stage(cfg: RejectionConfig) -> StageRecord:
    from trainer.rejection import run_rejection

    out = run_rejection(cfg)
    report = json.loads((out / "report.json").read_text())
    if report["kept"] == 0:
        raise RuntimeError(f"pipeline stage {cfg.name}: rejection sampling kept no sample ({report['dropped']}): "
                           f"the policy solved none of its prompts, so there is nothing to fine-tune on")
    return {"data": str(out / "sft.jsonl"), "report": report}


Runner = Callable[[StageConfig], StageRecord]
"""Runs one stage from its config; returns what its stamp records (`model` or `data`, and its own numbers)."""
C = TypeVar("C", DeriveConfig, SFTConfig, TrainConfig, RejectionConfig)


def runner(kind: type[C], run: Callable[[C], StageRecord]) -> Runner:
    """`run` as a runner of any stage config: one of another class than `kind` is refused by name."""
    def checked(cfg: StageConfig) -> StageRecord:
        if not isinstance(cfg, kind):
            raise TypeError(f"pipeline stage {cfg.name}: {run.__name__} takes a {kind.__name__}, "
                            f"got a {type(cfg).__name__}")
        return run(cfg)
    return checked


RUNNERS: dict[StageKind, Runner] = {
    "derive": runner(DeriveConfig, derive_model), "sft": runner(SFTConfig, run_sft_stage),
    "grpo": runner(TrainConfig, run_grpo_stage), "reject": runner(RejectionConfig, run_reject_stage)}
"""Stage kind -> its runner."""


# --- the job ---------------------------------------------------------------------------------------


@dataclass
class PipelineResult:
    stages: dict[str, StageRecord] = field(default_factory=dict)
    evals: dict[str, EvalRecord] = field(default_factory=dict)
    ran: list[str] = field(default_factory=list)
    """Stages run by this invocation (the rest were up to date)."""


Evaluator = Callable[[str, str, PipelineEvalConfig], EvalRecord]
"""(model directory, template, evaluation config) -> the model's held-out numbers."""


class SharedRay:
    """One Ray for every stage of a pipeline run, started before the first stage that needs it and stopped when
    the run ends. A stage's own `init_ray` joins it and the matching `shutdown_ray` leaves it running
    (cluster.ray_init nests), so Ray starts once per pipeline rather than once per stage."""

    def __init__(self, stages: Sequence[Stage]) -> None:
        clusters = [s.config.cluster for s in stages if not isinstance(s.config, DeriveConfig)]
        addresses = {c.address for c in clusters}
        if len(addresses) > 1:
            raise ValueError(f"the stages of one pipeline run on one Ray; they name {sorted(addresses)}")
        self.cluster: ClusterConfig | None = clusters[0] if clusters else None
        counts = [c.num_cpus for c in clusters]
        self.num_cpus = max(c for c in counts if c is not None) if counts and None not in counts else None
        """The most any stage asks of a local Ray (None: all of this machine's)."""
        self.started = False

    def before(self, stage: Stage) -> None:
        """Start Ray unless it is up or the stage runs without it (a derive stage)."""
        from cluster.ray_init import init_ray

        if self.started or self.cluster is None or isinstance(stage.config, DeriveConfig):
            return
        init_ray(self.cluster.address, num_cpus=self.num_cpus)
        self.started = True

    def __enter__(self) -> SharedRay:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        from cluster.ray_init import shutdown_ray

        if self.started:
            self.started = False
            shutdown_ray()


def run_pipeline(cfg: PipelineConfig, *, runners: Mapping[StageKind, Runner] | None = None,
                 evaluator: Evaluator = evaluate_model) -> PipelineResult:
    """Run every stage not yet up to date, evaluate the models, write pipeline.json; see the module docstring.
    Holds output_dir's lock throughout (trainer.run_lock), and each stage its own directory's. The real
    runners share one Ray (`SharedRay`); runners passed in (fakes) get none."""
    from trainer.run_lock import hold_run_dir

    with hold_run_dir(cfg.output_dir), SharedRay(cfg.stages if runners is None else ()) as ray:
        return _run_pipeline(cfg, runners or RUNNERS, evaluator, ray)


def _run_pipeline(cfg: PipelineConfig, runners: Mapping[StageKind, Runner], evaluator: Evaluator,
                  ray: SharedRay) -> PipelineResult:
    out = Path(cfg.output_dir)
    result = PipelineResult()
    began = time.perf_counter()
    previous = ""
    eval_hash = config_hash(cfg.eval, "")
    for stage in cfg.stages:
        digest = config_hash(stage.config, previous + stage.kind + _input_digest(stage))
        stage_dir = out / stage.name
        record = None if result.ran else read_stamp(stage_dir, digest)  # after a rerun stage, rerun the rest
        if record is None:
            print(f"=== pipeline {cfg.name}: stage {stage.name} ({stage.kind}) running", flush=True)
            ray.before(stage)
            t0 = time.perf_counter()
            record = runners[stage.kind](stage.config)
            record = write_stamp(stage_dir, {"hash": digest, "kind": stage.kind, **record,
                                             "seconds": round(time.perf_counter() - t0, 1)})
            result.ran.append(stage.name)
        else:
            print(f"=== pipeline {cfg.name}: stage {stage.name} up to date ({stage_dir / 'stage.json'})", flush=True)
        result.stages[stage.name] = record
        previous = digest
        if stage.template:
            values = _stamped_eval(stage_dir, digest + eval_hash, str(record["model"]), stage.template, cfg.eval,
                                   evaluator)
            result.evals[stage.name] = values
            print(f"=== pipeline {cfg.name}: after {stage.name}: " + ", ".join(f"{k} {v:.3f}" for k, v in values.items()),
                  flush=True)
    for label, model, template in cfg.baselines:
        digest = config_hash({"model": model, "template": template, "files": _files_digest(model)}, eval_hash)
        result.evals[label] = _stamped_eval(out / "baselines" / _slug(label), digest, model, template, cfg.eval,
                                            evaluator)
    table = stage_table(cfg, result)
    (out / "pipeline.json").write_text(json.dumps(table | {"seconds_this_run": round(time.perf_counter() - began, 1),
                                                           "ran": result.ran}, indent=1))
    print(render_table(cfg, result))
    print(f"pipeline.json: {out / 'pipeline.json'}")
    return result


def _stamped_eval(directory: Path, digest: str, model: str, template: str, cfg: PipelineEvalConfig,
                  evaluator: Evaluator) -> EvalRecord:
    stamp = directory / "eval.json"
    if stamp.exists():
        record = json.loads(stamp.read_text())
        if record.get("hash") == digest:
            return dict(record["eval"])
    t0 = time.perf_counter()
    values = evaluator(model, template, cfg)
    directory.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps({"hash": digest, "model": model, "template": template, "eval": values,
                                 "seconds": round(time.perf_counter() - t0, 1)}, indent=1))
    return values


def _input_digest(stage: Stage) -> str:
    """SHA-256 of the files of the model a derive stage copies (the shipped base, the student): a model
    installed anew under the same path reruns the stage. Other stages read earlier stages' outputs, which
    the chained hashes cover."""
    path = Path(stage.config.model_path) if isinstance(stage.config, DeriveConfig) else None
    if path is None or not path.is_dir():
        return ""
    h = hashlib.sha256()
    for p in sorted(path.iterdir()):
        if p.is_file():
            with open(p, "rb") as f:
                h.update(p.name.encode() + b"\0" + hashlib.file_digest(f, "sha256").digest())
    return h.hexdigest()


def _files_digest(model: str) -> str:
    """Names, sizes and modification times of a model directory's files: a rebuilt base is evaluated again."""
    path = Path(model)
    if not path.is_dir():
        return ""
    return ";".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in sorted(path.iterdir()) if p.is_file())


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in label).strip("_")


def rejection_reports(result: PipelineResult) -> dict[str, RejectionReport]:
    """Each rejection stage's report (trainer.rejection's report.json), by stage name."""
    return {n: cast(RejectionReport, r["report"]) for n, r in result.stages.items() if "report" in r}


def stage_table(cfg: PipelineConfig, result: PipelineResult) -> dict[str, object]:
    """What pipeline.json holds: per-model evaluation, the stages' own records, rejection report, comparison."""
    rows = [{"model": label, **values} for label, values in result.evals.items()]
    table: dict[str, object] = {"name": cfg.name, "eval": to_dict(cfg.eval), "table": rows, "stages": result.stages,
                                "rejection": rejection_reports(result)}
    comparison = student_comparison(cfg, result)
    if comparison is not None:
        table["student"] = comparison
    return table


def student_comparison(cfg: PipelineConfig, result: PipelineResult) -> dict[str, object] | None:
    """The student's base, its distillation and its GRPO run side by side (None: the pipeline has no student)."""
    base_label, distill, student_rl = cfg.student
    if not (base_label and distill in result.evals and student_rl in result.evals and base_label in result.evals):
        return None
    base_p = result.evals[base_label]["pass@1"]
    return {
        "base": base_label, "base_pass@1": base_p,
        "distilled_pass@1": result.evals[distill]["pass@1"],
        "distilled_sequences": result.stages[distill].get("sequences"),
        "grpo_pass@1": result.evals[student_rl]["pass@1"],
        "grpo_sequences": result.stages[student_rl].get("sequences"),
        "distilled_minus_base": result.evals[distill]["pass@1"] - base_p,
    }


def render_table(cfg: PipelineConfig, result: PipelineResult) -> str:
    """The stage table as text."""
    e = cfg.eval
    k = e.samples_per_prompt
    lines = [f"held-out: {e.prompts} prompts x {k} samples, temperature {e.temperature}",
             f"{'model':34s} {'pass@1':>7s} {f'cons@{k}':>7s} {'length':>7s}"]
    for label, row in result.evals.items():
        lines.append(f"{label:34s} {row['pass@1']:7.3f} {row[f'cons@{k}']:7.3f} {row['response_tokens']:7.1f}")
    for name, report in rejection_reports(result).items():
        dropped = ", ".join(f"{r} {n}" for r, n in report["dropped"].items() if n)
        lines.append(f"rejection ({name}): kept {report['kept']} of {report['samples']} samples "
                     f"from {report['prompts']} prompts; dropped: {dropped or 'none'}")
    s = student_comparison(cfg, result)
    if s:
        lines.append(f"student: base {s['base_pass@1']:.3f}, distilled {s['distilled_pass@1']:.3f} "
                     f"({s['distilled_sequences']} sequences), GRPO directly {s['grpo_pass@1']:.3f} "
                     f"({s['grpo_sequences']} sequences); distilled - base = {s['distilled_minus_base']:+.3f}")
    return "\n".join(lines)


def main(example: str, *, quick: bool, overrides: Sequence[str] = ()) -> int:
    """`python -m trainer pipeline --example NAME [--quick] [--set output_dir=DIR]`."""
    import sys

    from examples.configs import PIPELINE_EXAMPLES

    if example not in PIPELINE_EXAMPLES:
        print(f"error: unknown pipeline example {example!r}; known: {', '.join(sorted(PIPELINE_EXAMPLES))}",
              file=sys.stderr)
        return 2
    output_dir = None
    for item in overrides:
        key, _, value = item.partition("=")
        if key != "output_dir" or not value:
            print(f"error: a pipeline takes only --set output_dir=DIR (got {item!r}); change a stage in its "
                  f"config function", file=sys.stderr)
            return 2
        output_dir = value
    cfg = PIPELINE_EXAMPLES[example](quick=quick, output_dir=output_dir)
    run_pipeline(cfg)
    return 0
