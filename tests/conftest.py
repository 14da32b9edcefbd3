"""Fixtures for the rin-ship integration tests (helpers live in rinlib.py)."""

from __future__ import annotations

import uuid

import pytest

import rinlib
from rinlib import Moto, RinShip, free_port  # noqa: F401  (re-exported for tests)


@pytest.fixture
def rin(tmp_path):
    """Factory: rin(config_dict=None, name="rin", env=None, start=True) -> RinShip.

    Every server started is killed at teardown; its stderr is attached to a failing report."""
    created = []

    def make(config: dict | None = None, name: str | None = None, env: dict | None = None,
             start: bool = True, defaults: bool = True) -> RinShip:
        r = RinShip(tmp_path, config, name=name or f"rin{len(created)}", env=env,
                    defaults=defaults)
        created.append(r)
        if start:
            r.start()
        return r

    yield make
    for r in created:
        r.cleanup()


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory):
    """One moto S3 server for the session (tests that stop moto start their own)."""
    m = Moto(tmp_path_factory.mktemp("moto"))
    m.start()
    yield m
    m.stop()


@pytest.fixture
def moto_private(tmp_path):
    """A moto server owned by one test: it may stop and restart it (state is lost on stop)."""
    m = Moto(tmp_path / "moto")
    yield m
    m.stop()


@pytest.fixture
def bucket(moto_server):
    name = "b-" + uuid.uuid4().hex[:12]
    moto_server.client().create_bucket(Bucket=name)
    return name


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    rinlib.ALL.clear()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        for r in rinlib.ALL:
            txt = r.stderr_text()
            if len(txt) > 20000:
                txt = "...[truncated]...\n" + txt[-20000:]
            rep.sections.append((f"rin-ship stderr ({r.name}, config {r.config_path})", txt))
