"""Two hosts on one machine: the tiny run trains across a Ray cluster of two network namespaces.

    namespace A (10.231.0.1)                      namespace B (10.231.0.2), own mount namespace
      ray head  --resources {"hostA": 1}    veth    ray worker  --resources {"hostB": 1}
      driver (python -m trainer's train)  ◄──────►  rollout engine (vLLM)
      learner ranks 0, 1 (TP=2) + reference          (pinned by cluster.rollout_node_resource)
      (pinned by cluster.learner_node_resource)

Weights travel from learner rank 0 on A to the engine on B every step; each engine must then hold the
version and the checksums rank 0 computed from the bytes it sent. Nothing of the run may listen on all
interfaces in either namespace (checked with `ss -ltnp` inside them after Ray started and after each
sync): every store, rendezvous and collective binds the namespace's address (or loopback).

One exception, Ray's own servers: in cluster mode Ray 2.60's GCS, raylet, agents, monitor and every
worker's core-worker gRPC server listen on all interfaces (local mode binds them to 127.0.0.1), and no
setting changes that. The test tells them apart by process (Ray's daemons) and by port (the core-worker
port Ray's actor table records for each actor and for the driver that owns them), and lists them.

On the same cluster: a run whose learner is on B refuses an `output_dir` that B sees as another directory
(B's Ray runs in a mount namespace of its own with a directory bound over that path), while a directory
both share passes the probe on both hosts (cluster.storage); and ranks are taken node by node from a PACK
placement group, so a TP=2 x DP=2 learner on two bundles per host has each TP pair on one host
(cluster.placement.rank_order).

Cleanup kills the namespaces' own processes (`ip netns pids`) and deletes the namespaces; it never runs
`ray stop`, which kills every Ray on the machine. Traffic goes only to the two namespace addresses.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "artifacts" / "tiny-qwen2"
DATA = ROOT / "artifacts" / "data" / "arithmetic"
HOST_A, HOST_B = "10.231.0.1", "10.231.0.2"
GCS_PORT = 6390
RAY_START_ATTEMPTS = 3
STEPS = 2
RUN_TIMEOUT_S = 1500.0
"""The whole run on a shared 2-core machine: two Ray nodes, one vLLM engine, a TP=2 learner, 2 steps."""
ARTIFACT_WAIT_S = 120.0
"""The tiny model may be being installed by `make artifacts` in the same tree: wait for it this long."""

pytestmark = pytest.mark.slow


def _run(*cmd: str, check: bool = True, timeout: float = 60.0, env: dict | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run(list(cmd), capture_output=True, text=True, check=False, timeout=timeout, env=env)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return done


WILDCARDS = ("0.0.0.0", "*", "[::]", "::")
RAY_AGENTS = ("ray::IDLE", "ray::DashboardAgent", "ray::RuntimeEnvAgent")
"""Process titles of Ray's own worker-side processes (an idle pool worker, the per-node agents)."""


def listeners(namespace: str) -> list[dict]:
    """Listening TCP sockets in `namespace`: local address, port, pid and the process's command line."""
    import re

    out = _run("ip", "netns", "exec", namespace, "ss", "-ltnpH").stdout
    found = []
    for line in out.splitlines():
        if not line.strip():
            continue
        host, _, port = line.split()[3].rpartition(":")
        pid = re.search(r"pid=(\d+)", line)
        cmdline = ""
        if pid:
            try:
                cmdline = Path(f"/proc/{pid[1]}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            except OSError:
                pass
        found.append({"host": host.removeprefix("[::ffff:").rstrip("]") if host.startswith("[::ffff:") else host,
                      "port": int(port), "pid": int(pid[1]) if pid else 0, "cmdline": cmdline})
    return found


def is_rays_own(listener: dict, core_worker_ports: set[int]) -> bool:
    """Ray's daemons (its binaries and scripts), its agents and idle workers, or a core-worker gRPC port."""
    cmd = listener["cmdline"]
    return ("/site-packages/ray/" in cmd or "-m ray." in cmd or cmd.startswith(RAY_AGENTS)
            or listener["port"] in core_worker_ports)


def wildcard_violations(found: list[dict], core_worker_ports: set[int]) -> list[dict]:
    return [x for x in found if x["host"] in WILDCARDS and not is_rays_own(x, core_worker_ports)]


class TwoHosts:
    """Two network namespaces joined by a veth pair, each with one address, and a Ray node in each."""

    def __init__(self) -> None:
        tag = f"{os.getpid() % 100000}"
        self.ns = {HOST_A: f"grpoA{tag}", HOST_B: f"grpoB{tag}"}
        self.veth = (f"gva{tag}", f"gvb{tag}")
        self.tmp = Path(tempfile.mkdtemp(prefix="r2h", dir="/tmp"))  # short: Ray's socket paths <= 107 bytes
        self.shared = self.tmp / "shared"
        """The same directory on both hosts."""
        self.split = self.tmp / "split"
        """One path, two directories: host B's Ray runs in a mount namespace with `split_b` bound over it."""
        self.split_b = self.tmp / "split_b"
        for d in (self.shared, self.split, self.split_b):
            d.mkdir()
        token = self.tmp / "auth_token"
        token.write_text(secrets.token_hex(32))
        token.chmod(0o600)
        self.env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token),
                        PYTHONPATH=str(ROOT), RAY_USAGE_STATS_ENABLED="0",
                        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
        # Settings earlier tests of this session left in its environment that a cluster host must not inherit:
        # a learner built in-process sets GLOO_SOCKET_IFNAME=lo for its loopback rendezvous (a rank then
        # advertises 127.0.0.1 to the other host), and a local Ray sets its single-machine switch.
        for name in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "GLOO_SOCKET_IFNAME",
                     "VLLM_ALLOW_INSECURE_SERIALIZATION"):
            self.env.pop(name, None)

    def network(self) -> None:
        a, b = self.ns[HOST_A], self.ns[HOST_B]
        _run("ip", "netns", "add", a)
        _run("ip", "netns", "add", b)
        _run("ip", "link", "add", self.veth[0], "type", "veth", "peer", "name", self.veth[1])
        for ns, veth, addr in ((a, self.veth[0], HOST_A), (b, self.veth[1], HOST_B)):
            _run("ip", "link", "set", veth, "netns", ns)
            _run("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", veth)
            _run("ip", "-n", ns, "link", "set", veth, "up")
            _run("ip", "-n", ns, "link", "set", "lo", "up")

    def exec(self, host: str, *cmd: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns[host], *cmd]

    def start_ray(self) -> None:
        """A head in A, a worker in B. Ray gives a raylet 30 s to register (hard-coded in ray._private.node),
        which a loaded machine can miss: then the namespace's processes are killed and the start retried."""
        ray = str(Path(sys.executable).parent / "ray")
        common = ["--num-cpus=4", "--disable-usage-stats"]
        head = self.exec(HOST_A, ray, "start", "--head", f"--node-ip-address={HOST_A}", f"--port={GCS_PORT}",
                         '--resources={"hostA": 1}', f"--temp-dir={self.tmp}/a", "--include-dashboard=false", *common)
        worker_start = [ray, "start", f"--address={HOST_A}:{GCS_PORT}", f"--node-ip-address={HOST_B}",
                        '--resources={"hostB": 1}', f"--temp-dir={self.tmp}/b", *common]
        # Its own mount namespace (inherited by the raylet and its workers): a bind mount only B sees.
        worker = self.exec(HOST_B, "unshare", "--mount", "--propagation", "private", "sh", "-c",
                           'mount --bind "$0" "$1" && shift && exec "$@"', str(self.split_b), str(self.split), *worker_start)
        for host, cmd in ((HOST_A, head), (HOST_B, worker)):
            for attempt in range(RAY_START_ATTEMPTS):
                try:
                    _run(*cmd, env=self.env, timeout=240)
                    break
                except (RuntimeError, subprocess.TimeoutExpired):
                    if attempt == RAY_START_ATTEMPTS - 1:
                        raise
                    self.kill(host)

    def kill(self, host: str) -> None:
        """SIGKILL every process in one namespace, found by its own pids."""
        for pid in _run("ip", "netns", "pids", self.ns[host], check=False).stdout.split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        time.sleep(1)

    def close(self) -> None:
        """Kill what runs in the namespaces (by their own pids), then delete them."""
        for host in self.ns:
            self.kill(host)
        for ns in self.ns.values():
            _run("ip", "netns", "del", ns, check=False)
        _run("ip", "link", "del", self.veth[0], check=False)  # only if it never moved into a namespace
        shutil.rmtree(self.tmp, ignore_errors=True)


def _artifacts_ready() -> bool:
    return (MODEL / "model.safetensors").exists() and (DATA / "train.jsonl").exists()


@pytest.fixture(scope="module")
def tiny_inputs(tmp_path_factory) -> tuple[Path, Path]:
    """(model dir, arithmetic data dir): the tiny run's artifacts (`make artifacts`), waiting a little for a
    build in progress; without them, a random-weights model of the same architecture and the build's own
    data generator, which exercise the same placement, transfers and checks (not the learning)."""
    deadline = time.monotonic() + ARTIFACT_WAIT_S
    while not _artifacts_ready() and (MODEL.parent / ".tiny_build.lock").exists() and time.monotonic() < deadline:
        time.sleep(10)
    if _artifacts_ready():
        return MODEL, DATA
    from examples.build_tiny import BuildConfig, write_data
    from examples.tiny_model import write_test_model

    out = tmp_path_factory.mktemp("tiny")
    write_data(BuildConfig(out_dir=str(out)))
    print(f"{MODEL} absent: using a random-weights tiny Qwen2 in {out}")
    return write_test_model(out / "tiny-qwen2", seed=0, hidden_size=128, num_layers=2), out / "data" / "arithmetic"


@pytest.fixture(scope="module")
def two_hosts():
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2 (`ip netns`)")
    probe = f"grpoprobe{os.getpid() % 100000}"
    made = _run("ip", "netns", "add", probe, check=False)
    if made.returncode != 0:
        pytest.skip(f"network namespaces are not permitted here: {made.stderr.strip()}")
    _run("ip", "netns", "del", probe, check=False)
    hosts = TwoHosts()
    try:
        hosts.network()
        hosts.start_ray()
        yield hosts
    finally:
        hosts.close()


DRIVER = textwrap.dedent('''
    """Runs in namespace A: the tiny run, recording where each role ran and what listened meanwhile."""
    import json, sys

    import ray
    from ray._private.state import actors

    import trainer.system as system_module
    from examples.configs import tiny_cpu
    from trainer.config import apply_overrides
    from trainer.controller import train

    facts_path, namespaces, overrides = sys.argv[1], sys.argv[2].split(","), sys.argv[3:]
    facts = {"listeners": []}
    build, sync = system_module.System.build.__func__, system_module.System.sync_weights

    def node_of(actor):
        return actor.__ray_call__.remote(lambda self: ray.util.get_node_ip_address())

    def snapshot(when):
        from test_two_hosts import listeners

        table = actors().values()
        ports = {a["Address"]["Port"] for a in table} | {a["OwnerAddress"]["Port"] for a in table}
        facts.setdefault("core_worker_ports", []).extend(sorted(ports))
        for ns in namespaces:
            facts["listeners"].append([when, ns, listeners(ns)])

    def recording_build(cls, cfg):
        system = build(cls, cfg)
        facts["learner_nodes"] = ray.get([node_of(w) for w in system.learner.workers])
        facts["engine_nodes"] = ray.get([node_of(a) for a in system.engines.engine_actors])
        facts["rendezvous_host"] = system.weight_sync.spec.host
        facts["backend"] = system.weight_sync.spec.backend
        snapshot("built")
        return system

    def recording_sync(self, version):
        metrics = sync(self, version)
        held = self.engines.versions(with_checksums=True)
        facts.setdefault("versions", []).append([version, [v.policy_version for v in held],
                                                 [len(v.checksums) for v in held]])
        snapshot(f"synced {version}")
        return metrics

    system_module.System.build = classmethod(recording_build)
    system_module.System.sync_weights = recording_sync
    run_dir = train(apply_overrides(tiny_cpu(), overrides))
    facts["run_dir"] = str(run_dir)
    with open(facts_path, "w") as f:
        json.dump(facts, f)
''')


def test_tiny_run_trains_across_two_hosts(two_hosts, tiny_inputs, tmp_path):
    from trainer.metrics import read_metrics

    for ns in two_hosts.ns.values():  # Ray alone, before the run: only its own servers may be wildcards
        assert wildcard_violations(listeners(ns), set()) == [], ns
    model, data = tiny_inputs
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    facts_path = tmp_path / "facts.json"
    overrides = [
        f"cluster.address={HOST_A}:{GCS_PORT}", "cluster.learner_node_resource=hostA",
        "cluster.rollout_node_resource=hostB", "cluster.cpus_per_actor=0.25",
        f"model.path={model}", f"data.train_path={data / 'train.jsonl'}", f"data.eval_path={data / 'heldout.jsonl'}",
        f"output_dir={tmp_path}", "name=two_hosts", f"total_steps={STEPS}", "checkpoint_every=0",
        "rollout.num_engines=1", "rollout.weight_sync_checksum_every=1", "reward.num_actors=1",
        "algorithm.prompts_per_step=4", "algorithm.group_size=4", "data.eval_size=4",
        "eval.every_steps=0", "eval.samples_per_prompt=2",
    ]
    namespaces = ",".join(two_hosts.ns.values())
    env = dict(two_hosts.env, PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'tests'}")  # the driver imports listeners()
    run = subprocess.run([*two_hosts.exec(HOST_A, sys.executable, str(driver), str(facts_path), namespaces),
                          *overrides], capture_output=True, text=True, timeout=RUN_TIMEOUT_S, env=env,
                         cwd=ROOT, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-6000:]
    facts = json.loads(facts_path.read_text())

    # Roles ran where they were pinned; the transfer group met at learner rank 0's node address.
    assert facts["learner_nodes"] == [HOST_A, HOST_A] and facts["engine_nodes"] == [HOST_B]
    assert facts["rendezvous_host"] == HOST_A and facts["backend"] == "gloo"
    # Every sync: the engine across the veth holds the version, with checksums compared to the sender's.
    assert [v for v, _, _ in facts["versions"]] == list(range(1, STEPS + 1))
    assert all(held == [v] and counts[0] >= 5 for v, held, counts in facts["versions"])
    rows = read_metrics(Path(facts["run_dir"]), "train")
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    for row in rows:
        print(f"step {row['step']}: {row['weight_sync_bytes']:.0f} bytes A -> B in {row['weight_sync_s']:.2f}s, "
              f"{row['weight_sync_checksums_compared']:.0f} checksums equal, logprob gap max "
              f"{row['logprob_gap_max']:.1e}, reward {row['reward']:.3f}")
    for row in rows:
        assert row["policy_version_lag"] == 0 and row["weight_sync_checksums_compared"] >= 5, row
        assert row["logprob_gap_max"] < 1e-3, row  # the engine on B samples with the learner's exact weights
        assert row["weight_sync_bytes"] > 0
    # Nothing of the run listened on all interfaces, in either namespace, at any point we looked; every
    # other listener is on a namespace address or loopback.
    ports = set(facts["core_worker_ports"])
    ours = 0
    for when, ns, found in facts["listeners"]:
        assert wildcard_violations(found, ports) == [], f"{when}: in {ns}"
        for x in found:
            assert x["host"] in (*WILDCARDS, HOST_A, HOST_B, "127.0.0.1", "[::1]"), (when, ns, x)
        ours += sum(1 for x in found if not is_rays_own(x, ports))
    assert ours > 0, "no listener of the run was seen: the check proved nothing"
    rays = sorted({(x["cmdline"][:60], x["host"]) for _, _, found in facts["listeners"] for x in found
                   if x["host"] in WILDCARDS})
    print(f"listeners of the run seen (all on a namespace address or loopback): {ours}; facts: "
          f"learner on {facts['learner_nodes']}, engine on {facts['engine_nodes']}, rendezvous "
          f"{facts['rendezvous_host']} ({facts['backend']}), versions {facts['versions']}")
    print("Ray's own wildcard listeners:", *rays, sep="\n  ")


def run_in_a(hosts: TwoHosts, script: str, tmp_path: Path, *args: str) -> dict:
    """`script` as a driver in namespace A with `facts.json` and `args` as its arguments; its facts."""
    driver = tmp_path / "driver.py"
    driver.write_text(script)
    facts_path = tmp_path / "facts.json"
    run = subprocess.run([*hosts.exec(HOST_A, sys.executable, str(driver), str(facts_path), *args)],
                         capture_output=True, text=True, timeout=RUN_TIMEOUT_S, env=hosts.env, cwd=ROOT, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-6000:]
    return json.loads(facts_path.read_text())


OUTPUT_DIR_DRIVER = textwrap.dedent('''
    """Runs in namespace A: the shared-directory probe on both nodes, then a run whose learner is on B."""
    import json, sys

    import ray

    from cluster.ray_init import init_ray
    from cluster.storage import SharedDirError, check_shared_dir
    from examples.configs import tiny_cpu
    from trainer.config import apply_overrides
    from trainer.controller import train

    facts_path, address, shared, split, overrides = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
    init_ray(address)
    nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
    facts = {"shared": [[v.node_ip, v.read, v.write_error] for v in check_shared_dir(shared, nodes)]}
    try:  # the run as a user starts it: refused before any engine or learner rank starts
        train(apply_overrides(tiny_cpu(), [*overrides, f"output_dir={split}"]))
        facts["split_run"] = "started"
    except SharedDirError as e:
        facts["split_run"] = str(e)
    facts["placement_groups_left"] = sum(1 for g in ray.util.placement_group_table().values()
                                         if g["state"] != "REMOVED")
    with open(facts_path, "w") as f:
        json.dump(facts, f)
''')


def test_a_run_refuses_an_output_dir_that_is_not_one_directory_for_every_node(two_hosts, tiny_inputs, tmp_path):
    """Host B sees its own directory at the `split` path (a bind mount in its mount namespace), as a relative
    output_dir under `ray job submit --working-dir` or a node-local disk would be: refused, naming B and
    the fix. The `shared` directory is one for both hosts: the probe passes on both."""
    model, data = tiny_inputs
    overrides = [
        "cluster.learner_node_resource=hostB", "cluster.rollout_node_resource=hostA", "cluster.cpus_per_actor=0.25",
        f"model.path={model}", f"data.train_path={data / 'train.jsonl'}", f"data.eval_path={data / 'heldout.jsonl'}",
        "name=split", "total_steps=1", "rollout.num_engines=1", "reward.num_actors=1",
    ]
    facts = run_in_a(two_hosts, OUTPUT_DIR_DRIVER, tmp_path, f"{HOST_A}:{GCS_PORT}", str(two_hosts.shared),
                     str(two_hosts.split), f"cluster.address={HOST_A}:{GCS_PORT}", *overrides)
    assert sorted(facts["shared"]) == [[HOST_A, True, ""], [HOST_B, True, ""]]
    refused = facts["split_run"]
    print(refused)
    assert refused.startswith(f"output_dir={str(two_hosts.split)!r} is not one directory for the whole cluster"), refused
    assert f"node {HOST_B} (where it is {two_hosts.split}) does not see the file the driver wrote" in refused
    assert "wrote a file the driver does not see" in refused and HOST_A not in refused.split("driver wrote to")[1]
    assert "--set output_dir=/shared/runs" in refused
    assert facts["placement_groups_left"] == 0  # the refused run gave its bundles back
    left = [p for d in (two_hosts.shared, two_hosts.split, two_hosts.split_b) for p in d.rglob(".grpo-ray-probe-*")]
    assert left == []  # no probe file left, on either host's side of the split path


RANKS_DRIVER = textwrap.dedent('''
    """Runs in namespace A: where PACK put many bundles and which node each rank took; a TP=2 x DP=2
    learner on two bundles per host."""
    import json, sys

    import ray
    from ray.util.placement_group import placement_group_table

    from actors.learner_group import LearnerGroup
    from cluster.placement import Placement, ResourceSpec, RoleSpec
    from cluster.ray_init import init_ray

    facts_path, address, model = sys.argv[1:4]
    init_ray(address)
    ip_of = {n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes()}
    facts = {}
    many = Placement(ResourceSpec(roles=(RoleSpec("learner", 32, 0.25, 0.0),)))
    raw = placement_group_table(many._groups["learner"])["bundles_to_node_id"]
    facts["bundle_nodes"] = [ip_of[raw[b]] for b in range(32)]
    facts["rank_nodes_32"] = many.run_on("learner", ray.util.get_node_ip_address)
    many.remove()
    placement = Placement(ResourceSpec(roles=(RoleSpec("learner", 4, 2.0, 0.0),)))
    group = LearnerGroup(model_path=model, tp=2, dp=2, placement=placement.options_for("learner"), timeout_s=1200)
    facts["coords"] = group.coords
    facts["rank_nodes"] = ray.get([w.__ray_call__.remote(lambda self: ray.util.get_node_ip_address())
                                   for w in group.workers])
    group.shutdown()
    placement.remove()
    with open(facts_path, "w") as f:
        json.dump(facts, f)
''')


def test_tensor_parallel_groups_stay_on_one_host(two_hosts, tiny_inputs, tmp_path):
    """Ranks are taken node by node from a PACK placement group (cluster.placement.rank_order): 32 bundles
    over two hosts in groups of 8 on one host each; and a real TP=2 x DP=2 learner (Megatron over gloo)
    with two bundles per host has each TP pair on one host, DP across the two."""
    model, _ = tiny_inputs
    facts = run_in_a(two_hosts, RANKS_DRIVER, tmp_path, f"{HOST_A}:{GCS_PORT}", str(model))
    bundles, ranks32 = facts["bundle_nodes"], facts["rank_nodes_32"]
    interleaved = sum(bundles[b] != bundles[b + 1] for b in range(31)) > 1
    print(f"PACK placed 32 bundles on {bundles} ({'interleaved' if interleaved else 'in runs'}); ranks took "
          f"{ranks32}")
    assert sorted(ranks32) == sorted(bundles)
    assert all(len(set(ranks32[g: g + 8])) == 1 for g in range(0, 32, 8)), ranks32
    coords, nodes = facts["coords"], facts["rank_nodes"]
    assert sorted(nodes) == [HOST_A, HOST_A, HOST_B, HOST_B]
    pairs = {}
    for c, node in zip(coords, nodes, strict=True):
        pairs.setdefault(c["dp_rank"], []).append((c["tp_rank"], node))
    print(f"TP=2 x DP=2: {pairs}")
    assert sorted(pairs) == [0, 1] and all(sorted(t for t, _ in p) == [0, 1] for p in pairs.values())
    assert all(len({n for _, n in p}) == 1 for p in pairs.values()), pairs  # each TP pair on one host
    assert {p[0][1] for p in pairs.values()} == {HOST_A, HOST_B}
