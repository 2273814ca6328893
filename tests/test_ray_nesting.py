"""`init_ray` and `shutdown_ray` nest: only the call that started Ray stops it, so a pipeline or a test
session can run several entry points (each with its own init/shutdown pair) in one Ray."""

from __future__ import annotations

import pytest

from cluster import ray_init


class FakeRay:
    def __init__(self, up: bool = False):
        self.up = up
        self.inits = 0
        self.shutdowns = 0

    def is_initialized(self) -> bool:
        return self.up

    def shutdown(self) -> None:
        self.up = False
        self.shutdowns += 1


@pytest.fixture
def fake(monkeypatch):
    ray = FakeRay()

    def start(address, **kw):
        ray.up = True
        ray.inits += 1
        return "gcs"

    monkeypatch.setattr(ray_init, "ray", ray)
    monkeypatch.setattr(ray_init, "_init", start)
    monkeypatch.setattr(ray_init, "_gcs_address", lambda: "gcs")
    monkeypatch.setattr(ray_init, "_stop_on_sigterm", lambda previous: None)
    monkeypatch.setattr(ray_init, "_opened", [])
    return ray


def test_inner_pairs_leave_the_outer_ray_running(fake):
    ray_init.init_ray("local")  # a session's (or a pipeline's) Ray
    for _ in range(3):  # three entry points, each with its own pair
        ray_init.init_ray("local")
        ray_init.shutdown_ray()
        assert fake.up and fake.shutdowns == 0
    ray_init.shutdown_ray()
    assert not fake.up and fake.inits == 1 and fake.shutdowns == 1


def test_a_ray_started_by_someone_else_is_left_running(fake):
    fake.up = True  # a plain ray.init() (a notebook, a Ray job's driver)
    ray_init.init_ray("local")
    ray_init.shutdown_ray()
    assert fake.up and fake.inits == 0


def test_an_unmatched_shutdown_still_stops_ray(fake):
    fake.up = True
    ray_init.shutdown_ray()
    assert not fake.up
