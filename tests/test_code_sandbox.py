"""The sandbox for model-written code and the `code` verifier (`reward_server.code_sandbox`, `code_verifier`).

The hostile set: each program attacks the host and prints the right answer only if its attack got
through (or never gets to print it), so it must score 0, the host must be unharmed, and the sandbox must
still serve an honest program afterwards. Each has a passing twin that does the benign version of the same
thing under the same limits and must score 1. No test sends traffic off the machine: the only listener is
the test's own, on 127.0.0.1. No Ray; the containment tests need root (namespaces and a uid of their own).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import textwrap
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from reward_server.code_sandbox import CodeSandbox, SandboxLimits
from reward_server.code_verifier import CodeVerifier, extract_program, parse_cases
from reward_server.rewards import check_inline
from reward_server.scorers import build_routed_scorer
from trainer.config import CodeRewardConfig, RewardConfig
from trainer.types import Completion, Prompt

LIMITS = SandboxLimits(wall_s=3.0, cpu_s=2, memory_bytes=256 << 20)
"""Tighter than the defaults so the hostile set stays fast; the mechanisms are the same."""
REVERSE = json.dumps({"inputs": ["abc\n"], "outputs": ["cba\n"]})
"""Ground truth of every hostile/twin case: print the input line reversed."""
ANSWER = "print(input()[::-1])"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sandbox() -> CodeSandbox:
    return CodeSandbox(LIMITS, workers=2)


@pytest.fixture(scope="module")
def verifier(sandbox: CodeSandbox) -> CodeVerifier:
    return CodeVerifier(sandbox, partial_credit=False, sample_budget_s=10.0)


@pytest.fixture()
def contained(sandbox: CodeSandbox) -> None:
    if sandbox.isolation != "namespaces":
        pytest.skip(f"containment needs root (this host gives {sandbox.isolation!r})")


def reward(verifier: CodeVerifier, program: str, ground_truth: str = REVERSE) -> float:
    verdict = verifier.verify(textwrap.dedent(program), ground_truth)
    assert not verdict.error, verdict.reason
    return 1.0 if verdict.passed == verdict.total else 0.0


def sandbox_pids() -> list[int]:
    """Processes running as a sandbox uid (none may outlive its run)."""
    low, high = LIMITS.uid_base, LIMITS.uid_base + LIMITS.uid_count
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if low <= entry.stat().st_uid < high:
                    pids.append(int(entry.name))
            except FileNotFoundError:
                continue
    return pids


@pytest.fixture()
def host_checks(verifier: CodeVerifier) -> Iterator[None]:
    """After the test: nothing of the sandbox left running or on disk, and it still serves."""
    workdirs = set(Path(tempfile.gettempdir()).glob("grpo-ray-code-*"))
    yield
    assert sandbox_pids() == []
    assert set(Path(tempfile.gettempdir()).glob("grpo-ray-code-*")) <= workdirs
    assert reward(verifier, ANSWER) == 1.0


# -- the hostile set and its twins ----------------------------------------------------------------

HOSTILE = {
    "fork_bomb": """
        import os
        while True:
            try:
                os.fork()
            except OSError:
                pass
    """,
    "infinite_loop": "while True: pass",
    "ignores_sigterm": """
        import signal
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        while True: pass
    """,
    "memory_bomb": """
        chunks = []
        while True:
            chunks.append(bytearray(64 << 20))
        print(input()[::-1])
    """,
    "gigabyte_to_stdout": """
        import sys
        chunk = "x" * (1 << 20)
        for _ in range(1024):
            sys.stdout.write(chunk)
        print(input()[::-1])
    """,
    "kill_everything": """
        import os
        os.kill(-1, 9)
        print(input()[::-1])
    """,
    "daemon": """
        import os, sys, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                time.sleep(1.0)  # outlive the program, then answer on the inherited stdout
                print("cba", flush=True)
                time.sleep(30)
            os._exit(0)
    """,
    "interfaces": """
        import socket
        names = [name for _, name in socket.if_nameindex()]
        if names != ["lo"]:
            print(input()[::-1])
    """,
}
"""Programs that must score 0 (they never print the answer, or only if the attack got through)."""

WHY = {"fork_bomb": "timeout", "infinite_loop": "timeout", "ignores_sigterm": "timeout", "memory_bomb": "MemoryError",
       "gigabyte_to_stdout": "output_limit", "kill_everything": "ProcessLookupError", "daemon": "wrong output",
       "interfaces": "wrong output"}
"""Why each hostile program fails: the limit that stopped it, so a typo cannot pass for containment."""

TWINS = {
    "fork_bomb": """
        import os
        children = [pid for pid in (os.fork() for _ in range(4)) if pid or os._exit(0)]
        for pid in children:
            os.waitpid(pid, 0)
        print(input()[::-1])
    """,
    "infinite_loop": "for _ in range(10**5): pass\nprint(input()[::-1])",
    "ignores_sigterm": """
        import signal
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print(input()[::-1])
    """,
    "memory_bomb": "block = bytearray(64 << 20)\nprint(input()[::-1])",
    "gigabyte_to_stdout": "import sys\nsys.stderr.write('x' * 10000)\nprint(input()[::-1])",
    "kill_everything": """
        import os, time
        pid = os.fork()
        if pid == 0:
            time.sleep(30)
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        print(input()[::-1])
    """,
    "daemon": """
        import os
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        print(input()[::-1])
    """,
    "interfaces": "import socket\nsocket.if_nameindex()\nprint(input()[::-1])",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_program_scores_zero_and_the_host_is_unharmed(name, verifier, contained, host_checks):
    bystander = subprocess.Popen(["sleep", "60"])  # os.kill(-1, 9) must not reach it (nor the test runner)
    try:
        verdict = verifier.verify(textwrap.dedent(HOSTILE[name]), REVERSE)
        assert verdict.passed == 0 and not verdict.error
        assert WHY[name] in (verdict.reason or ""), verdict.reason
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


@pytest.mark.parametrize("name", sorted(TWINS))
def test_passing_twin_scores_one(name, verifier, contained, host_checks):
    assert reward(verifier, TWINS[name]) == 1.0


def test_no_write_outside_its_own_directory(verifier, contained, host_checks, tmp_path):
    marker = tmp_path / "marker.txt"
    marker.write_text("keep")
    marker.chmod(0o666)  # even a file anyone may write is out of reach: the host's /tmp is not its /tmp
    token = os.urandom(6).hex()
    targets = [str(marker), f"/tmp/pwned-{token}", str(Path.home() / f"pwned-{token}"), f"{REPO}/pwned-{token}"]
    program = f"""
        import os
        hit = False
        for path in {targets!r}:
            try:
                existed = os.path.exists(path)
                with open(path, "a") as f:
                    f.write("pwned")
                hit = hit or existed or path.startswith({str(Path.home())!r}) or path.startswith({str(REPO)!r})
            except OSError:
                pass
        if hit:
            print(input()[::-1])
    """
    assert reward(verifier, program) == 0.0
    assert marker.read_text() == "keep"
    assert not any(Path(p).exists() for p in targets[1:])
    own = "open('out.txt', 'w').write('ok')\nassert open('out.txt').read() == 'ok'\nprint(input()[::-1])"
    assert reward(verifier, own) == 1.0


def test_cannot_read_another_process_memory_or_environment(verifier, contained, host_checks, monkeypatch):
    secret = os.urandom(8).hex()
    monkeypatch.setenv("GRPO_TEST_SECRET", secret)
    program = f"""
        import os
        seen = repr(dict(os.environ))
        for path in ["/proc/1/environ", "/proc/{os.getpid()}/environ", "/proc/{os.getpid()}/mem",
                     "/proc/{os.getppid()}/environ"] + ["/proc/%s/environ" % p for p in os.listdir("/proc") if p.isdigit()]:
            try:
                with open(path, "rb") as f:
                    seen += f.read(1 << 20).decode(errors="replace")
            except OSError:
                pass
        if {secret!r} in seen:
            print(input()[::-1])
    """
    assert reward(verifier, program) == 0.0
    own = "open('/proc/self/status').read()\nprint(input()[::-1])"
    assert reward(verifier, own) == 1.0


def test_cannot_reach_a_listener_of_the_host(verifier, contained, host_checks):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(0.5)
        port = listener.getsockname()[1]
        program = f"""
            import socket
            try:
                socket.create_connection(("127.0.0.1", {port}), timeout=1).close()
                print(input()[::-1])
            except OSError:
                pass
        """
        assert reward(verifier, program) == 0.0
        with pytest.raises(TimeoutError):
            listener.accept()
    local = "import socket\na, b = socket.socketpair()\na.send(b'x')\nassert b.recv(1) == b'x'\nprint(input()[::-1])"
    assert reward(verifier, local) == 1.0


def test_only_its_own_loopback_is_visible(sandbox, contained):
    run = sandbox.run("import socket\nprint([n for _, n in socket.if_nameindex()])")
    assert run.ok and run.stdout.strip() == b"['lo']"


def test_cannot_delete_files_it_can_see(verifier, contained, host_checks):
    folder = Path(tempfile.mkdtemp(dir=REPO, prefix=".sandbox-test-"))
    try:
        folder.chmod(0o755)
        victim = folder / "victim.txt"
        victim.write_text("precious")
        victim.chmod(0o644)
        program = f"""
            import os, shutil
            assert open({str(victim)!r}).read() == "precious"  # it can see and read the file
            for remove in (lambda: os.remove({str(victim)!r}), lambda: shutil.rmtree({str(folder)!r})):
                try:
                    remove()
                except OSError:
                    pass
            if not os.path.exists({str(victim)!r}):
                print(input()[::-1])
        """
        assert reward(verifier, program) == 0.0
        assert victim.read_text() == "precious"
        own = "import os\nopen('x', 'w').close()\nos.remove('x')\nprint(input()[::-1])"
        assert reward(verifier, own) == 1.0
    finally:
        shutil.rmtree(folder)


def test_runs_as_an_unprivileged_user_with_a_minimal_environment(sandbox, contained, monkeypatch):
    monkeypatch.setenv("GRPO_TEST_SECRET", "s3cret")
    run = sandbox.run("import json, os\nprint(json.dumps([os.getuid(), os.getpid(), sorted(os.environ), "
                      "len(os.listdir('/proc/self/fd'))]))")
    uid, pid, env, fds = json.loads(run.stdout)
    assert run.ok and LIMITS.uid_base <= int(uid) < LIMITS.uid_base + LIMITS.uid_count
    assert int(pid) == 2  # pid 1 is the namespace's init
    assert "GRPO_TEST_SECRET" not in env and "PYTHONPATH" not in env
    assert int(fds) <= 4  # stdin, stdout, stderr, and the listing's own


def test_limits_are_reported(sandbox):
    assert sandbox.run("while True: pass", wall_s=0.5).status == "timeout"
    assert sandbox.run("print('x' * (4 << 20))").status == "output_limit"
    run = sandbox.run("print(1)")
    assert run.ok and run.stdout == b"1\n" and run.isolation.startswith(sandbox.isolation)


# -- parallel batches ------------------------------------------------------------------------------


def test_a_batch_runs_in_parallel_with_results_in_order():
    sandbox = CodeSandbox(replace(LIMITS, wall_s=2.0), workers=2)
    verifier = CodeVerifier(sandbox, partial_credit=False, sample_budget_s=10.0)
    jobs = [(f"import sys\nprint({i} * int(sys.stdin.read()))", "3") for i in range(5)]
    jobs.insert(2, ("while True: pass", ""))
    runs = sandbox.run_many(jobs)
    assert [r.stdout for r in runs] == [b"0\n", b"3\n", b"", b"6\n", b"9\n", b"12\n"]
    assert runs[2].status == "timeout"
    programs = [ANSWER, "print(input())", "while True: pass", ANSWER]
    verdicts = verifier.verify_many([(p, REVERSE) for p in programs])
    assert [v.passed for v in verdicts] == [1, 0, 0, 1]


# -- the verifier ----------------------------------------------------------------------------------


def test_extract_program_takes_the_last_python_block_after_thinking():
    text = "<think>```python\nprint(0)\n```</think> first ```python\nprint(1)\n``` then ```\nprint(2)\n```"
    assert extract_program(text) == ("print(2)\n", "")
    assert extract_program("<think>```python\nprint(1)\n```")[0] is None
    assert extract_program("```cpp\nint main() {}\n```") == (None, "last code block is 'cpp', not Python")
    assert extract_program("no code") == (None, "no fenced code block")


def test_ground_truth_layouts():
    io, call, asserts = parse_cases(REVERSE), parse_cases('{"fn_name": "f", "inputs": [[1, 2]], "outputs": [3]}'), \
        parse_cases('{"asserts": ["assert f(1, (2,)) == (3, [4])"]}')
    assert io[0].stdin == "abc\n" and io[0].expected_stdout == "cba\n"
    assert call[0].expected_value == 3 and "_call('f'" in (call[0].expr or "")
    assert asserts[0].expr == "f(1, (2,))" and asserts[0].expected_value == [3, [4]]
    for bad in ("[]", "{}", '{"inputs": [1], "outputs": []}', '{"asserts": ["assert f(1)"]}',
                '{"asserts": ["assert f(1) == g(2)"]}', "not json"):
        with pytest.raises(ValueError):
            parse_cases(bad)


def test_call_based_and_assert_cases(verifier):
    program = "def add(a, b):\n    print('noise')\n    return a + b\nif __name__ == '__main__':\n    raise SystemExit(1)"
    assert reward(verifier, program, '{"fn_name": "add", "inputs": [[1, 2], [5, 5]], "outputs": [3, [10]]}') == 1.0
    assert reward(verifier, program, '{"asserts": ["assert add(1, 2) == 3", "assert add(2, 2) == 4"]}') == 1.0
    assert reward(verifier, program, '{"asserts": ["assert add(1, 2) == 4"]}') == 0.0
    method = "class Solution:\n    def add(self, a, b):\n        return a + b"
    assert reward(verifier, method, '{"fn_name": "add", "inputs": [[1, 2]], "outputs": [3]}') == 1.0


def test_an_object_equal_to_everything_does_not_pass(verifier):
    """The expected value never enters the sandbox; only the value's JSON text comes back."""
    hack = "class Any:\n    def __eq__(self, other): return True\ndef add(a, b): return Any()"
    assert reward(verifier, hack, '{"asserts": ["assert add(1, 2) == 3"]}') == 0.0


def test_partial_credit_is_the_share_of_cases_passed(sandbox):
    gt = json.dumps({"inputs": ["1\n", "2\n", "3\n"], "outputs": ["1\n", "2\n", "4\n"]})
    partial = CodeVerifier(sandbox, partial_credit=True, sample_budget_s=10.0).verify("print(input())", gt)
    assert (partial.passed, partial.total) == (2, 3) and partial.reason == "case 2: wrong output"
    strict = CodeVerifier(sandbox, partial_credit=False, sample_budget_s=10.0).verify("print(input())", gt)
    assert (strict.passed, strict.total) == (2, 3)


def test_a_sample_budget_bounds_all_its_cases(sandbox):
    gt = json.dumps({"inputs": ["1\n"] * 4, "outputs": ["1\n"] * 4})
    verdict = CodeVerifier(sandbox, partial_credit=True, sample_budget_s=1.0).verify("while True: pass", gt)
    assert verdict.passed == 0 and not verdict.error


# -- the routed scorer a reward actor holds ---------------------------------------------------------


def _item(task: str, answer: str, ground_truth: str = REVERSE) -> tuple[Prompt, Completion]:
    prompt = Prompt(index=0, text="Reverse the line. <think>", ground_truth=ground_truth, task=task)
    text = f" plan </think> <answer>\n```python\n{answer}\n```\n</answer>"
    return prompt, Completion(token_ids=(1,) * 8, text=text, rollout_logprobs=(0.0,) * 8, finish_reason="stop")


FAST = CodeRewardConfig(case_wall_s=2.0)
"""The infinite loop below needs only to time out, not to take the default 4 s."""


@pytest.mark.parametrize("cfg", [
    RewardConfig(verifier="code", format_weight=0.5, code=FAST),
    RewardConfig(verifier="arithmetic", format_weight=0.5, routes=("apps:code",), code=FAST),
], ids=["reward.verifier", "reward.routes"])
def test_code_through_the_routed_scorer(cfg):
    scorer = build_routed_scorer(cfg, max_response_tokens=64, check=check_inline)
    try:
        results = scorer.score([_item("apps", ANSWER), _item("apps", "print(input())"),
                                _item("apps", "while True: pass"), _item("apps", ANSWER, "{bad")])
    finally:
        scorer.close()
    assert [r.components["accuracy"] for r in results] == [1.0, 0.0, 0.0, 0.0]
    assert [r.reward for r in results] == [1.5, 0.5, 0.5, 0.5]
    assert [r.correct for r in results] == [True, False, False, False]
    assert results[1].error is None and results[2].error is None  # a failing program is a wrong answer
    assert results[3].error is not None and "not JSON" in results[3].error  # a data bug is an error


def test_prompt_task_code_picks_the_verifier_and_partial_credit_applies():
    cfg = RewardConfig(verifier="arithmetic", code=CodeRewardConfig(partial_credit=True))
    scorer = build_routed_scorer(cfg, max_response_tokens=64, check=check_inline)
    gt = json.dumps({"inputs": ["ab\n", "aa\n"], "outputs": ["ba\n", "aa\n"]})
    try:
        (result,) = scorer.score([_item("code", "print(input())", gt)])
    finally:
        scorer.close()
    assert result.components["accuracy"] == 0.5 and not result.correct

