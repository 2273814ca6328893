"""Command line: `python -m trainer train --example NAME [--set section.field=value ...]`.

    python -m trainer train --example tiny_cpu
    python -m trainer train --example tiny_cpu --set total_steps=10 --set rollout.num_engines=1
    python -m trainer config --example qwen25_math_r1_zero       # print the resolved config
    python -m trainer plan --example qwen25_math_r1_zero         # GPUs, nodes and memory per GPU
    python -m trainer examples                                    # list the examples
    python -m trainer sft --example tiny_cpu_sft                  # SFT on the learner (R1 cold start)
    python -m trainer reject --example tiny_cpu_reject --checkpoint runs/tiny_cpu_r1_rl/model
    python -m trainer pipeline --example r1_tiny [--quick]    # every R1 stage, resumable (trainer/pipeline.py)

`train` checks the model directory, the tokenizer and the data files before it starts anything.
`plan` starts nothing (GRPO, SFT, rejection-sampling and pipeline examples: a pipeline's every stage);
it exits with 1 when an estimate does not fit the GPUs.
"""

from __future__ import annotations

import argparse
import json
import sys

from trainer.config import ConfigError, TrainConfig, apply_overrides, to_dict


def examples() -> dict:
    # Examples live beside the packages (examples/configs.py), importable from the repository root.
    from examples.configs import EXAMPLES

    return EXAMPLES


def resolve(example: str, overrides: list[str]) -> TrainConfig:
    table = examples()
    if example not in table:
        raise ConfigError(f"unknown example {example!r}; known: {', '.join(sorted(table))}")
    return apply_overrides(table[example](), overrides).validate()


def plan(example: str, overrides: list[str]) -> int:
    """`plan` for a GRPO example, an SFT stage (learner only) or rejection sampling (engines only)."""
    from examples.configs import PIPELINE_EXAMPLES, REJECTION_EXAMPLES, SFT_EXAMPLES
    from trainer.plan import PlanError, make_plan, sft_view

    if example in PIPELINE_EXAMPLES:
        return plan_pipeline(example, overrides)
    try:
        if example in SFT_EXAMPLES:
            sft = apply_overrides(SFT_EXAMPLES[example](), overrides).validate()
            result = make_plan(sft_view(sft), example=example, stage="sft")
        elif example in REJECTION_EXAMPLES:
            reject = apply_overrides(REJECTION_EXAMPLES[example](), overrides).validate()
            result = make_plan(reject.engine_config(), example=example, stage="reject")
        else:
            result = make_plan(resolve(example, overrides), example=example)
    except (ConfigError, PlanError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(result.render())
    if not result.fits:
        print(f"error: {result.refusal()}", file=sys.stderr)
        return 1
    return 0


def plan_pipeline(example: str, overrides: list[str]) -> int:
    """`plan` for every learner or engine stage of a pipeline (`--set` is not taken: stages differ).

    A stage's model that an earlier stage writes is planned at the shape of the model that chain started
    from (a student cut from its teacher: at the teacher's, an upper bound)."""
    from dataclasses import replace
    from typing import cast

    from examples.configs import PIPELINE_EXAMPLES
    from trainer.config import RejectionConfig, SFTConfig
    from trainer.pipeline import DeriveConfig, stage_output
    from trainer.plan import PlanError, make_plan, sft_view

    if overrides:
        print("error: plan of a pipeline takes no --set; change a stage in its config function", file=sys.stderr)
        return 2
    cfg = PIPELINE_EXAMPLES[example]()
    refused: list[str] = []
    origin: dict[str, str] = {}
    for stage in cfg.stages:
        # A stage's kind decides its config's type (trainer.pipeline.Stage): the casts only say so.
        trained = cast(SFTConfig | TrainConfig | RejectionConfig, stage.config)
        path = cast(DeriveConfig, stage.config).model_path if stage.kind == "derive" else trained.model.path
        origin[stage_output(stage)] = origin.get(path, path)
        if stage.kind in ("sft", "grpo", "reject"):
            stage = replace(stage, config=replace(trained, model=replace(trained.model, path=origin.get(path, path))))
        try:
            if stage.kind == "sft":
                result = make_plan(sft_view(cast(SFTConfig, stage.config).validate()),
                                   example=f"{example}/{stage.name}", stage="sft")
            elif stage.kind == "reject":
                result = make_plan(cast(RejectionConfig, stage.config).validate().engine_config(),
                                   example=f"{example}/{stage.name}", stage="reject")
            elif stage.kind == "grpo":
                result = make_plan(cast(TrainConfig, stage.config).validate(), example=f"{example}/{stage.name}")
            else:
                print(f"{example}/{stage.name}: {stage.kind} (a model copy on one process; nothing to place)")
                continue
        except (ConfigError, PlanError) as e:
            print(f"error: {example}/{stage.name}: {e}", file=sys.stderr)
            return 2
        print(result.render())
        if not result.fits:
            refused.append(f"{stage.name}: {result.refusal()}")
    for line in refused:
        print(f"error: {line}", file=sys.stderr)
    return 1 if refused else 0


EXIT_BUSY = 3
"""Exit status when another run holds the run directory (trainer.run_lock)."""


def main(argv: list[str] | None = None) -> int:
    from trainer.run_lock import RunDirectoryBusy

    try:
        return _dispatch(argv)
    except RunDirectoryBusy as e:  # another run writes there: say who, without a traceback
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BUSY


def _dispatch(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("train", "run GRPO"), ("config", "print the resolved config as JSON"),
                            ("plan", "print GPUs, nodes and per-GPU memory of each role; start nothing")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--example", required=True, help="config function from examples/configs.py")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override one field, e.g. --set algorithm.group_size=16 (repeatable)")
    sub.add_parser("examples", help="list the examples")
    p = sub.add_parser("pipeline", help="R1's stages from one config; resumes at the first unfinished stage")
    p.add_argument("--example", required=True, help="pipeline config function from examples/configs.py")
    p.add_argument("--quick", action="store_true", help="a few steps per stage (tests, a first look)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="output_dir=DIR",
                   help="only output_dir may be set")
    for name, help_text in (("sft", "supervised fine-tuning on the learner (cold start, rejection-sampled data, "
                                    "distillation); writes run_dir/hf"),
                            ("reject", "rejection sampling on the rollout engines; writes SFT JSONL and a report")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--example", required=True, help="config function from examples/configs.py")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override one field (repeatable)")
        if name == "reject":
            p.add_argument("--checkpoint", default=None, help="Hugging Face model directory to sample from")
    args = parser.parse_args(argv)

    if args.command == "sft":
        from trainer.sft import main as sft_main

        return sft_main(args.example, args.overrides)
    if args.command == "pipeline":
        from trainer.pipeline import main as pipeline_main

        return pipeline_main(args.example, quick=args.quick, overrides=args.overrides)
    if args.command == "reject":
        from trainer.rejection import main as reject_main

        return reject_main(args.example, args.overrides, checkpoint=args.checkpoint)

    if args.command == "examples":
        for name, fn in sorted(examples().items()):
            print(f"{name:28s} {(fn.__doc__ or '').strip().splitlines()[0]}")
        from examples.configs import PIPELINE_EXAMPLES, REJECTION_EXAMPLES, SFT_EXAMPLES

        for command, table in (("sft", SFT_EXAMPLES), ("reject", REJECTION_EXAMPLES), ("pipeline", PIPELINE_EXAMPLES)):
            for name, stage_fn in sorted(table.items()):
                print(f"{name:28s} [{command}] {(stage_fn.__doc__ or '').strip().splitlines()[0]}")
        return 0
    if args.command == "plan":
        return plan(args.example, args.overrides)
    try:
        cfg = resolve(args.example, args.overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.command == "config":
        print(json.dumps(to_dict(cfg), indent=2))
        return 0
    from trainer.data import DataError, check_run_inputs

    try:
        inputs = check_run_inputs(cfg)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"inputs checked: {len(inputs.train)} training and {len(inputs.heldout)} held-out prompts")
    from trainer.controller import train

    run_dir = train(cfg, inputs)
    print(f"run directory: {run_dir}")
    return 0


def cli(argv: list[str] | None = None) -> int:
    """`main`, except that a command stopped by SIGTERM exits with 143 once its clean-up ran."""
    try:
        return main(argv)
    except KeyboardInterrupt as interrupt:
        from cluster.ray_init import exit_code_after

        code = exit_code_after(interrupt)
        if code is None:  # Ctrl-C: Python's own exit (status 130 in a shell)
            raise
        print("grpo-ray: stopped by SIGTERM after cleaning up; the same command resumes from the newest "
              "checkpoint", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(cli())
