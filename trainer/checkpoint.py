"""Resumable checkpoints that a crash, a full disk or a stray edit cannot lose.

Layout under `run_dir/checkpoints/`:
  step_000010/learner/...       the learner's sharded state (model, optimizer, schedule, RNG per rank)
  step_000010/controller.json   step, policy_version, data position, RNG state of the controller
  step_000010/ledger.jsonl      the prompt ledger: ids trained and dropped per step (trainer.ledger)
  step_000010/manifest.json     written last: byte size and sha256 of every other file of the checkpoint
  latest                        name of the newest committed checkpoint (the commit point)
  discarded/                    checkpoints a resume set aside: newer than the one it resumed from
                                (never committed by `latest`, or corrupt); kept for inspection

Saving (`save_checkpoint`): everything goes into `step_N.tmp/`; every file and directory is fsynced,
the manifest is written and fsynced, the directory is renamed to `step_N` and its parent fsynced, and
only then `latest` is replaced (write, fsync, rename, fsync). A run killed at any point resumes from
the previous checkpoint; a `.tmp` left behind is removed when the next run starts. Pruning keeps the
newest `keep` checkpoints by step number, always counting the one just written, and never touches a
checkpoint with a higher step.

Resuming (`resume_point`, `latest_checkpoint`): the checkpoint named by `latest` is validated (every
file of the manifest present with its size and hash, `controller.json` readable); if `latest` is
missing, empty, dangling or names anything but a `step_N` directory here, the directory is scanned
instead, newest step first. A checkpoint that fails validation is skipped with a warning naming the
bad file and why, and the previous one is tried. A directory that holds checkpoints of which none is
intact is refused (`CheckpointError`) rather than silently restarted from step 0.

Starting over: `resume=false`, or a resume that finds no checkpoint, in a directory holding outputs
of an earlier run moves them (checkpoints, metrics, TensorBoard events, curves, config) into
`previous/<UTC time>/` instead of deleting or mixing with them. Delete that folder to reclaim space.

Learner shards are plain tensors and containers, loaded with `torch.load(weights_only=True)`
(`load_tensors`), so a planted pickle cannot run code. Validation loads each shard that way too (memory
mapped, so no tensor data is read): a shard that is refused makes its checkpoint not intact, and the
resume falls back to the previous one before any actor starts, even when the manifest was re-hashed.

A save that fails (a full disk, a lost mount) raises `CheckpointSaveError` naming the file and the
cause in words, and removes its `step_N.tmp`; the previous checkpoint and `latest` are untouched.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from cluster.untyped import JsonValue, TorchLoaded
from trainer.data import SamplerState

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
MANIFEST = "manifest.json"
CONTROLLER = "controller.json"
POINTER = "latest"
DISCARDED = "discarded"
PREVIOUS = "previous"
RUN_OUTPUTS = (CHECKPOINTS, "metrics.jsonl", "tb", "curves.png", "config.json")
"""What a run writes into its directory; a fresh start moves these aside."""
MANIFEST_FORMAT = 1
HASH_CHUNK_BYTES = 8 << 20
"""Read size when hashing: large enough that a multi-GB shard hashes at disk speed."""
HASH_THREADS = min(8, os.cpu_count() or 1)
"""Files hashed at once (sha256 runs at about 0.5-2 GB/s per core)."""

DISK_FULL_FREE_BYTES = 64 << 20
"""A torch write that stopped short with at most this much space left on its filesystem is taken as a
full disk: torch reports it only as `[enforce fail at inline_container.cc] unexpected pos`, and the
short write itself used up what was free."""
_TORCH_SHORT_WRITE = ("inline_container.cc", "PytorchStreamWriter failed writing")

_STEP_DIR_RE = re.compile(r"step_([0-9]{6,})")
_SHARD_RE = re.compile(r"learner/rank_[0-9]+\.pt")
"""The files `LearnerWorker.load` reads with torch.load (one per rank)."""


class CheckpointError(RuntimeError):
    """A run directory's checkpoints cannot be used, and starting over would silently lose them."""


class CorruptCheckpoint(CheckpointError):
    """One file of a checkpoint is missing, truncated, changed or unreadable."""

    def __init__(self, file: Path | str, reason: str) -> None:
        super().__init__(str(file), reason)  # both in args, so the error pickles across Ray
        self.file = Path(file)
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.file}: {self.reason}"


class CheckpointSaveError(CheckpointError):
    """Writing a checkpoint failed. The run stops; the partial save is removed, the previous checkpoint kept."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(str(path), reason)  # both in args, so the error pickles across Ray
        self.path = Path(path)
        self.reason = reason

    def __str__(self) -> str:
        return f"saving {self.path} failed: {self.reason}"


@dataclass(frozen=True)
class ControllerState:
    step: int
    """Steps completed."""
    policy_version: int
    """Version of the weights after the last completed step."""
    sampler: SamplerState
    """Where the prompt sampler stands."""
    sampling_seed: int
    """Seed for the next step's rollouts."""


# -- saving ---------------------------------------------------------------------------------------


def save_checkpoint(run_dir: Path, state: ControllerState, save_learner: Callable[[Path], None],
                    *, keep: int = 2, extra_files: Mapping[str, str] | None = None) -> Path:
    """Write a checkpoint of `state` plus the learner's (via `save_learner(dir)`) and `extra_files` (name ->
    text, e.g. the prompt ledger), commit it, and keep the newest `keep` (at least the one just written).
    A failed write raises CheckpointSaveError (file and cause) after removing the partial `step_N.tmp`."""
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    name = _step_name(state.step)
    tmp, final = root / f"{name}.tmp", root / name
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        save_learner(tmp / "learner")
        (tmp / CONTROLLER).write_text(json.dumps(asdict(state), indent=1))
        for rel, text in (extra_files or {}).items():
            (tmp / rel).write_text(text, encoding="utf-8")
        files = _fsync_and_hash(tmp)
        manifest = {"format": MANIFEST_FORMAT, "step": state.step, "files": files}
        _write_durably(tmp / MANIFEST, json.dumps(manifest, indent=1))
    except Exception as exc:
        raise _failed_save(root, tmp, exc) from exc
    if final.exists():  # the same step saved before (a rerun): keep the old copy, out of the way
        _set_aside(final, root / DISCARDED)
    os.replace(tmp, final)
    _fsync_dir(root)
    try:
        _write_durably(root / f"{POINTER}.tmp", name)
    except Exception as exc:  # `final` stays uncommitted: the next resume sets it aside
        raise _failed_save(root, root / f"{POINTER}.tmp", exc) from exc
    os.replace(root / f"{POINTER}.tmp", root / POINTER)
    _fsync_dir(root)
    _prune(root, newest=state.step, keep=keep)
    return final


def _failed_save(root: Path, partial: Path, exc: BaseException) -> CheckpointSaveError:
    """The error for a save that raised `exc`, once `partial` (a step_N.tmp or latest.tmp) is removed,
    so a full disk is not kept full until the next start."""
    error = save_failure(partial, exc)  # before the removal: it frees the space a full disk lacked
    if partial.is_dir() and not partial.is_symlink():
        shutil.rmtree(partial, ignore_errors=True)
    else:
        partial.unlink(missing_ok=True)
    pointer, _ = _read_pointer(root)
    kept = f"{pointer} is kept (latest)" if pointer is not None else "no earlier checkpoint exists"
    log.error("checkpoint save failed: %s", error)
    return CheckpointSaveError(error.path, f"{error.reason}. The partial {partial.name} was removed; {kept}")


def save_failure(path: Path, exc: BaseException) -> CheckpointSaveError:
    """`exc`, raised while writing `path`, as an error that names the file and says the cause in words:
    "no space left on device" for ENOSPC, or for torch's short-write failure on a (nearly) full disk."""
    for link in _exception_chain(exc):
        if isinstance(link, CheckpointSaveError):  # a learner rank already named its file and the cause
            return link
    chain = list(_exception_chain(exc))
    text = " ".join(str(link) for link in chain)
    free = _free_bytes(path)
    full = (any(getattr(link, "errno", None) == errno.ENOSPC for link in chain)
            or "no space left on device" in text.lower()
            or (any(mark in text for mark in _TORCH_SHORT_WRITE) and free is not None
                and free <= DISK_FULL_FREE_BYTES))
    if full:
        return CheckpointSaveError(path, f"no space left on device ({_bytes_text(free)} free on its filesystem; "
                                         f"{type(exc).__name__}: {str(exc)[:200]})")
    return CheckpointSaveError(path, f"{type(exc).__name__}: {str(exc)[:300]}")


def _exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc`, its causes and contexts, and the original error inside Ray's wrappers (`.cause`)."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        link = todo.pop(0)
        if link is None or id(link) in seen:
            continue
        seen.add(id(link))
        yield link
        cause = getattr(link, "cause", None)
        todo += [link.__cause__, link.__context__, cause if isinstance(cause, BaseException) else None]


def _free_bytes(path: Path) -> int | None:
    """Free bytes on the filesystem of `path` (or of its nearest existing parent); None if unknown."""
    for candidate in (path, *path.parents):
        try:
            return shutil.disk_usage(candidate).free
        except OSError:
            continue
    return None


def _bytes_text(n: int | None) -> str:
    if n is None:
        return "unknown space"
    return f"{n / (1 << 20):.1f} MiB" if n >= 1 << 20 else f"{n} bytes"


def _prune(root: Path, *, newest: int, keep: int) -> None:
    """Remove checkpoints older than step `newest` beyond the newest `keep` (the one at `newest`
    counts). Higher steps are left alone: they are not this lineage's to judge."""
    older = sorted(((step, path) for step, path in _step_dirs(root) if step < newest), reverse=True)
    for _, path in older[max(keep, 1) - 1:]:
        shutil.rmtree(path, ignore_errors=True)


def _fsync_and_hash(directory: Path) -> dict[str, dict[str, JsonValue]]:
    """fsync every file and directory under `directory`; {relative path: {bytes, sha256}}. Files are
    hashed in parallel (hashlib releases the GIL): one shard per rank, each possibly gigabytes."""
    paths = sorted(Path(d) / f for d, _, names in os.walk(directory) for f in names)
    with ThreadPoolExecutor(max_workers=HASH_THREADS) as pool:
        hashed = list(pool.map(lambda p: _hash_file(p, fsync=True), paths))
    for dirpath, _, _ in os.walk(directory):
        _fsync_dir(Path(dirpath))
    return {p.relative_to(directory).as_posix(): {"bytes": size, "sha256": digest}
            for p, (digest, size) in zip(paths, hashed)}


def _hash_file(path: Path, *, fsync: bool = False) -> tuple[str, int]:
    h, size = hashlib.sha256(), 0
    with path.open("rb") as f:
        while chunk := f.read(HASH_CHUNK_BYTES):
            h.update(chunk)
            size += len(chunk)
        if fsync:
            os.fsync(f.fileno())
    return h.hexdigest(), size


def _write_durably(path: Path, text: str) -> None:
    with path.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- resuming -------------------------------------------------------------------------------------


def resume_point(run_dir: Path, *, resume: bool) -> Path | None:
    """Ready `run_dir` for a run; the intact checkpoint to resume from, or None to start at step 0.

    Removes `.tmp` leftovers of a killed save. With `resume`, returns the newest intact checkpoint
    (`latest_checkpoint`) and moves checkpoints with higher steps to `checkpoints/discarded/`, so
    this lineage's pruning never sees them. A fresh start moves an earlier run's outputs to
    `previous/<UTC time>/`. Raises CheckpointError when checkpoints exist but none is intact.
    """
    run_dir = Path(run_dir)
    root = run_dir / CHECKPOINTS
    for stale in sorted(root.glob("*.tmp")) if root.is_dir() else []:
        log.warning("removing %s, left by a save that did not finish", stale)
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale)
        else:
            stale.unlink()
    checkpoint = latest_checkpoint(run_dir) if resume else None
    if checkpoint is not None:
        step = _step_of(checkpoint.name)
        for newer_step, path in sorted(_step_dirs(root)):
            if newer_step > step:
                moved = _set_aside(path, root / DISCARDED)
                log.warning("resuming from %s: moved the newer %s to %s", checkpoint.name, path.name, moved)
        return checkpoint
    earlier = [run_dir / name for name in RUN_OUTPUTS if (run_dir / name).exists()]
    if earlier:
        dest = _unique(run_dir / PREVIOUS / _utc_stamp())
        dest.mkdir(parents=True)
        for path in earlier:
            os.replace(path, dest / path.name)
        why = "resume=false" if not resume else "no checkpoint to resume from"
        log.warning("starting %s at step 0 (%s): moved the earlier run's %s to %s", run_dir, why,
                    ", ".join(p.name for p in earlier), dest)
    return None


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest intact checkpoint of `run_dir`; None when it holds no checkpoint at all.

    Tries the checkpoint `latest` names, then older ones; if `latest` cannot be trusted, every
    `step_N` directory newest first. Logs each skipped checkpoint with its bad file. Raises
    CheckpointError when there are checkpoints but none is intact.
    """
    root = Path(run_dir) / CHECKPOINTS
    candidates = _candidates(root)
    if not candidates:
        return None
    problems = []
    for path in candidates:
        try:
            validate_checkpoint(path)
        except CorruptCheckpoint as exc:
            log.warning("checkpoint %s is not usable (%s); trying the previous one", path.name, exc)
            problems.append(f"  {exc}")
            continue
        return path
    raise CheckpointError(
        f"{root} holds checkpoints but none is intact:\n" + "\n".join(problems) + "\nRefusing to start "
        f"over from step 0. Repair or remove them, or --set resume=false to start over (the old outputs "
        f"then move to {Path(run_dir) / PREVIOUS}/)."
    )


def _candidates(root: Path) -> list[Path]:
    """Checkpoints to try, best first: `latest`'s and older ones, or every one if `latest` is bad."""
    dirs = sorted(_step_dirs(root), reverse=True)
    if not dirs:
        return []
    pointer, problem = _read_pointer(root)
    if pointer is None:
        log.warning("%s %s; scanning %s for the newest intact checkpoint", root / POINTER, problem, root)
        return [path for _, path in dirs]
    newest = _step_of(pointer.name)
    return [pointer] + [path for step, path in dirs if step < newest]


def _read_pointer(root: Path) -> tuple[Path | None, str]:
    """(checkpoint directory `latest` names, "") or (None, what is wrong with it)."""
    file = root / POINTER
    try:
        name = file.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None, "is missing"
    except (OSError, UnicodeDecodeError) as exc:
        return None, f"is unreadable ({type(exc).__name__}: {exc})"
    if not name:
        return None, "is empty"
    if not _STEP_DIR_RE.fullmatch(name):  # no paths: `../..`, `/etc`, `step_1/../..`
        return None, f"names {name[:80]!r}, not a step_N directory of this run"
    path = root / name
    if not path.is_dir() or path.is_symlink():
        return None, f"names {name}, which does not exist"
    return path, ""


def validate_checkpoint(checkpoint: Path) -> ControllerState:
    """Check every file against the manifest (present, same size, same sha256) and parse the
    controller state; raises CorruptCheckpoint naming the first bad file."""
    manifest_path = checkpoint / MANIFEST
    if not manifest_path.is_file():
        raise CorruptCheckpoint(manifest_path, "missing (the save never completed, or an older format)")
    try:
        files = json.loads(manifest_path.read_text(encoding="utf-8"))["files"]
        entries = [(str(rel), int(e["bytes"]), str(e["sha256"])) for rel, e in files.items()]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CorruptCheckpoint(manifest_path, f"unreadable ({type(exc).__name__}: {exc})") from exc
    for rel in _expected_files(checkpoint, files):
        if rel not in files:
            raise CorruptCheckpoint(checkpoint / rel, "missing from the manifest: the save was incomplete")
    for rel, size, _ in entries:  # cheap checks first: presence and size
        path = checkpoint / rel
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise CorruptCheckpoint(manifest_path, f"lists a path outside the checkpoint: {rel!r}")
        if not path.is_file():
            raise CorruptCheckpoint(path, "missing")
        actual = path.stat().st_size
        if actual != size:
            what = "empty" if actual == 0 else "truncated" if actual < size else "longer than saved"
            raise CorruptCheckpoint(path, f"{what}: {actual} bytes, {size} at save")
    with ThreadPoolExecutor(max_workers=HASH_THREADS) as pool:
        digests = list(pool.map(lambda e: _hash_file(checkpoint / e[0])[0], entries))
    for (rel, _, digest), actual_digest in zip(entries, digests):
        if actual_digest != digest:
            raise CorruptCheckpoint(checkpoint / rel, "contents changed since the save (sha256 differs)")
    for rel, _, _ in entries:  # a planted pickle with a re-hashed manifest passes the hashes, not this
        if _SHARD_RE.fullmatch(rel):
            load_tensors(checkpoint / rel, mmap=True)
    return load_controller_state(checkpoint)


def _expected_files(checkpoint: Path, files: dict[str, JsonValue]) -> list[str]:
    """Files every checkpoint must hold: the controller state, learner state, and one shard per
    rank when the learner wrote its layout (`learner/learner.json`, see `LearnerWorker.save`)."""
    expected = [CONTROLLER]
    if not any(rel.startswith("learner/") for rel in files):
        expected.append("learner/")
    try:
        world_size = int(json.loads((checkpoint / "learner" / "learner.json").read_text())["world_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return expected  # no layout file (or a damaged one, which its hash check reports)
    return expected + [f"learner/rank_{rank:05d}.pt" for rank in range(world_size)]


def load_controller_state(checkpoint: Path) -> ControllerState:
    """The controller state of `checkpoint`; CorruptCheckpoint naming the file if it is garbled."""
    file = checkpoint / CONTROLLER
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
        return ControllerState(
            step=int(raw["step"]),
            policy_version=int(raw["policy_version"]),
            sampler=_sampler_state(raw["sampler"]),
            sampling_seed=int(raw["sampling_seed"]),
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CorruptCheckpoint(file, f"unreadable ({type(exc).__name__}: {exc})") from exc


def _sampler_state(raw: dict[str, JsonValue]) -> SamplerState:
    """`SamplerState` from its JSON; `deferred` is a list there, and absent in older checkpoints."""
    return SamplerState(epoch=int(raw["epoch"]), position=int(raw["position"]),
                        deferred=tuple(int(i) for i in raw.get("deferred", ())))


def load_tensors(path: Path | str, *, mmap: bool = False) -> TorchLoaded:
    """`torch.load(path, weights_only=True)` onto the CPU, with errors that name the file: plain
    tensors, numbers, strings and containers load; any other pickle is refused, not run. With `mmap`
    the tensors map the file instead of being read (a check of the pickle costs no memory)."""
    import pickle

    import torch

    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise CorruptCheckpoint(path, "missing") from None
    if size == 0:
        raise CorruptCheckpoint(path, "empty (0 bytes)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        raise CorruptCheckpoint(path, f"refused: holds more than plain tensors and containers ({exc})") from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CorruptCheckpoint(path, f"unreadable, truncated or not a torch file ({type(exc).__name__}: "
                                      f"{str(exc)[:300]})") from exc


# -- helpers --------------------------------------------------------------------------------------


def _step_name(step: int) -> str:
    return f"step_{step:06d}"


def _step_of(name: str) -> int:
    return int(name.removeprefix("step_"))


def _step_dirs(root: Path) -> list[tuple[int, Path]]:
    """(step, directory) of every committed-looking `step_N` directory under `root`."""
    if not root.is_dir():
        return []
    return [(_step_of(p.name), p) for p in root.iterdir()
            if _STEP_DIR_RE.fullmatch(p.name) and p.is_dir() and not p.is_symlink()]


def _set_aside(path: Path, folder: Path) -> Path:
    """Move `path` into `folder` under a name that says when; returns the new path."""
    folder.mkdir(parents=True, exist_ok=True)
    dest = _unique(folder / f"{path.name}-{_utc_stamp()}")
    os.replace(path, dest)
    return dest


def _unique(path: Path) -> Path:
    candidate, n = path, 1
    while candidate.exists():
        candidate, n = path.with_name(f"{path.name}.{n}"), n + 1
    return candidate


def _utc_stamp() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
