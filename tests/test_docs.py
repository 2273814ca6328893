"""The docs say only what the code does: every command, path, make target and example they name exists.

Read: README.md, docs/*.md and examples/README.md. Checked:
- every `python -m MODULE [SUBCOMMAND]` runs with `--help`, all in one process (the module's file is looked
  up first, so a missing module fails with its name); third-party modules (pytest, pip) are skipped;
- every backticked repository path (`trainer/grpo.py`, `tests/test_x.py::test_name`, `docs/...`) exists,
  and a `::name` names a test function in that file; every relative markdown link points at a file, and
  its `#anchor` at a heading of that file;
- every `make TARGET` in inline code or a code block is a target of the Makefile;
- every `--example NAME` is one that its command (`train`, `sft`, `reject`, `pipeline`, `plan`) accepts.
Paths a run writes (`runs/`, `artifacts/`, `/data/...`) and placeholders (`NAME`, `<stage>`) are not
checked. The checkers are pure functions over text; the last test plants one bad item of each kind.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "examples" / "README.md")

REPO_PACKAGES = ("trainer", "actors", "reward_server", "cluster", "examples", "benchmarks")
"""Top-level folders whose modules `python -m` may name."""
THIRD_PARTY_MODULES = ("pytest", "pip", "venv", "ray", "vllm", "torch", "transformers")
REPO_ROOTS = (*REPO_PACKAGES, "tests", "docs", ".ci")
"""A backticked token whose first component is one of these is a repository path and must exist."""
REPO_FILES = ("Makefile", "setup.cfg", "pyproject.toml", "README.md", "ruff.toml")
PLACEHOLDER = re.compile(r"[<>*{}]|\.\.\.|\b[A-Z]{3,}\b")
"""`runs/NAME/<stage>`, `examples/...`: a pattern, not a path."""

MODULE_CMD = re.compile(r"python -m ([A-Za-z_][\w.]*)(?:[ \t]+([a-z][\w-]*))?")
INLINE_CODE = re.compile(r"`([^`]+)`")
FENCE = re.compile(r"^```.*?^```", re.M | re.S)
MD_LINK = re.compile(r"\]\(([^)\s]+)\)")
MAKE_CMD = re.compile(r"^\s*make ([\w-]+)", re.M)
EXAMPLE_ARG = re.compile(r"--example[ =]([A-Za-z_]\w*)")
TRAINER_SUB = re.compile(r"trainer (train|config|plan|sft|reject|pipeline)\b")
TRAINER_SUBCOMMANDS = ("train", "config", "plan", "examples", "pipeline", "sft", "reject")


def docs() -> dict[Path, str]:
    return {path: path.read_text() for path in DOC_FILES}


def split_code(text: str) -> tuple[str, list[str]]:
    """The prose with fenced blocks removed, and the fenced blocks."""
    return FENCE.sub("", text), FENCE.findall(text)


# --- python -m ----------------------------------------------------------------------------------


def module_commands(text: str) -> set[tuple[str, str | None]]:
    """(module, subcommand or None) of every `python -m` in the text; subcommands only for `trainer`."""
    found = set()
    for module, word in MODULE_CMD.findall(text):
        module = module.rstrip(".")
        if module.split(".")[0] in THIRD_PARTY_MODULES:
            continue
        found.add((module, word if module == "trainer" and word else None))
    return found


def module_file_problems(commands: set[tuple[str, str | None]], root: Path = ROOT) -> list[str]:
    problems = []
    for module, sub in sorted(commands, key=str):
        parts = module.split(".")
        if parts[0] not in REPO_PACKAGES:
            problems.append(f"python -m {module}: not a module of this repository")
            continue
        base = root.joinpath(*parts)
        if not (base.with_suffix(".py").is_file() or (base / "__main__.py").is_file()):
            problems.append(f"python -m {module}: no {'/'.join(parts)}.py or {'/'.join(parts)}/__main__.py")
        if module == "trainer" and sub is not None and sub not in TRAINER_SUBCOMMANDS:
            problems.append(f"python -m trainer {sub}: no such subcommand")
    return problems


HELP_RUNNER = """
import contextlib, io, json, runpy, sys
out_path, results = sys.argv[1], {}
for arg in sys.argv[2:]:
    module, _, sub = arg.partition(":")
    sys.argv = [module, *([sub] if sub else []), "--help"]
    captured, code = io.StringIO(), None
    try:
        with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
            runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as e:
        code = e.code
    except BaseException as e:
        code = f"{type(e).__name__}: {e}"
    results[arg] = [code, captured.getvalue()]
open(out_path, "w").write(json.dumps(results))
"""
"""Runs `python -m MODULE [SUB] --help` for each argument in one process, so torch and friends are imported
once (a process per module took minutes on a busy 2-core machine)."""


def help_problems(commands: list[tuple[str, str | None]], tmp_dir: Path) -> list[str]:
    """`--help` of each (module, subcommand): it must exit 0 and print a usage line."""
    out = tmp_dir / "help.json"
    args = [f"{m}:{s}" if s else m for m, s in commands]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", HELP_RUNNER, str(out), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    if not out.exists():
        return [f"the --help runner failed (exit {done.returncode}): {done.stderr[-2000:]}"]
    results = json.loads(out.read_text())
    return [f"python -m {arg.replace(':', ' ')} --help: exit {code}: {text[-500:]}"
            for arg, (code, text) in results.items() if code not in (0, None) or "usage" not in text.lower()]


# --- paths and links ------------------------------------------------------------------------------


def path_problems(text: str, root: Path = ROOT) -> list[str]:
    prose, _ = split_code(text)
    problems = []
    for span in INLINE_CODE.findall(prose):
        token = span.strip()
        if not token or any(c.isspace() for c in token) or PLACEHOLDER.search(token):
            continue
        token = token.removeprefix("./")
        file_part, _, test_name = token.partition("::")
        first = file_part.split("/")[0]
        if not ((first in REPO_ROOTS and "/" in file_part) or file_part in REPO_FILES):
            continue
        path = root / file_part
        if not path.exists():
            problems.append(f"`{token}`: no such path in the repository")
        elif test_name and not re.search(rf"^\s*def {re.escape(test_name.split('[')[0])}\(", path.read_text(), re.M):
            problems.append(f"`{token}`: {file_part} has no test {test_name}")
    return problems


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def link_problems(text: str, doc: Path) -> list[str]:
    prose, _ = split_code(text)
    problems = []
    for target in MD_LINK.findall(prose):
        if re.match(r"[a-z]+:", target):
            continue
        file_part, _, anchor = target.partition("#")
        path = (doc.parent / file_part) if file_part else doc
        if not path.is_file():
            problems.append(f"link ({target}): no such file")
            continue
        if anchor:
            headings = {slug(h) for h in re.findall(r"^#+ (.+)$", split_code(path.read_text())[0], re.M)}
            if anchor not in headings:
                problems.append(f"link ({target}): no heading #{anchor} in {path.name}")
    return problems


# --- make targets and examples --------------------------------------------------------------------


def make_targets(makefile: Path = ROOT / "Makefile") -> set[str]:
    return set(re.findall(r"^([\w.-]+)\s*:(?!=)", makefile.read_text(), re.M))


def make_problems(text: str, targets: set[str]) -> list[str]:
    prose, fences = split_code(text)
    named = [m for span in INLINE_CODE.findall(prose) for m in MAKE_CMD.findall(span)]
    named += [m for block in fences for m in MAKE_CMD.findall(block)]
    return [f"make {name}: no such target in the Makefile" for name in sorted(set(named)) if name not in targets]


def example_tables() -> dict[str | None, set[str]]:
    """Which example names each `python -m trainer` subcommand accepts."""
    from examples.configs import EXAMPLES, PIPELINE_EXAMPLES, REJECTION_EXAMPLES, SFT_EXAMPLES

    grpo, sft, reject, pipeline = set(EXAMPLES), set(SFT_EXAMPLES), set(REJECTION_EXAMPLES), set(PIPELINE_EXAMPLES)
    return {"train": grpo, "config": grpo, "plan": grpo | sft | reject | pipeline, "sft": sft,
            "reject": reject, "pipeline": pipeline, None: grpo | sft | reject | pipeline}


def example_problems(text: str, tables: dict[str | None, set[str]]) -> list[str]:
    problems = []
    for line in text.splitlines():
        for match in EXAMPLE_ARG.finditer(line):
            name = match.group(1)
            if name.isupper():  # NAME
                continue
            subs = TRAINER_SUB.findall(line[:match.start()])
            sub = subs[-1] if subs else None
            if name not in tables[sub]:
                problems.append(f"--example {name}: not an example that {f'trainer {sub}' if sub else 'any command'} "
                                f"accepts ({', '.join(sorted(tables[sub]))})")
    return problems


# --- the tests ------------------------------------------------------------------------------------


def test_every_python_m_command_runs_its_help(tmp_path):
    commands = set().union(*(module_commands(text) for text in docs().values()))
    assert commands, "no `python -m` command found in the docs"
    assert module_file_problems(commands) == []
    assert help_problems(sorted(commands, key=str), tmp_path) == []


def test_every_repository_path_and_link_exists():
    problems = [f"{doc.relative_to(ROOT)}: {p}" for doc, text in docs().items()
                for p in path_problems(text) + link_problems(text, doc)]
    assert problems == []


def test_every_make_target_is_in_the_makefile():
    targets = make_targets()
    assert {"demo", "test", "test-fast", "bench", "gpu-check"} <= targets
    problems = [f"{doc.relative_to(ROOT)}: {p}" for doc, text in docs().items() for p in make_problems(text, targets)]
    assert problems == []


def test_every_example_name_is_one_its_command_accepts():
    tables = example_tables()
    problems = [f"{doc.relative_to(ROOT)}: {p}" for doc, text in docs().items()
                for p in example_problems(text, tables)]
    assert problems == []


def test_no_times_of_day_or_load_averages_in_the_docs():
    """Figures carry their date, commit and machine; when in the day they ran and how busy it was is history."""
    pattern = re.compile(r"\b\d{1,2}:\d{2}(?:-\d{1,2}:\d{2})? UTC\b|load average", re.I)
    problems = [f"{doc.relative_to(ROOT)}: {m.group(0)!r}" for doc, text in docs().items()
                if doc.parent.name == "docs" or doc == ROOT / "README.md" for m in pattern.finditer(text)]
    assert problems == []


def test_the_checks_catch_a_planted_mistake_of_each_kind(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("x")
    text = ("Run `python -m trainer trian --example tiny_cpu` or\n"
            "```sh\npython -m examples.no_such_script --out x\nmake no-such-target\n"
            "python -m trainer sft --example tiny_cpu\n```\n"
            "See `trainer/no_such_module.py`, `tests/test_grpo.py::test_no_such_test`, `make demo`,\n"
            "[the missing page](missing.md), [a missing heading](doc.md#nowhere).\n")
    commands = module_commands(text)
    assert ("examples.no_such_script", None) in commands
    file_problems = module_file_problems(commands)
    assert any("no_such_script" in p for p in file_problems)
    assert any("trainer trian" in p for p in file_problems)
    help_failed = help_problems([("trainer", "trian"), ("trainer", "train"), ("examples.no_such_script", None)],
                                tmp_path)
    assert [p.split(":")[0] for p in help_failed] == ["python -m trainer trian --help",
                                                      "python -m examples.no_such_script --help"]
    assert path_problems(text) == ["`trainer/no_such_module.py`: no such path in the repository",
                                   "`tests/test_grpo.py::test_no_such_test`: tests/test_grpo.py has no test "
                                   "test_no_such_test"]
    assert path_problems("`trainer/grpo.py`, `runs/NAME/model`, `artifacts/tiny-qwen2`, `/data/x`") == []
    assert [p.split(":")[0] for p in link_problems(text, doc)] == ["link (missing.md)", "link (doc.md#nowhere)"]
    assert make_problems(text, make_targets()) == ["make no-such-target: no such target in the Makefile"]
    tables = example_tables()
    problems = example_problems(text, tables)
    assert len(problems) == 1 and problems[0].startswith("--example tiny_cpu: not an example that trainer sft")
    assert example_problems("python -m trainer train --example nope", tables)
