"""Fixtures for the feedback app's tests: PostgreSQL, the app in a subprocess, headless Chromium
(see feedback_servers.py). Each is skipped with a message saying why only when it cannot be
installed."""

from __future__ import annotations

import pytest
from feedback_servers import Postgres, Server, apt_install, find_chromium, pg_bindir


@pytest.fixture(scope="session")
def postgres():
    bindir = pg_bindir()
    if bindir is None:
        why = apt_install("postgresql")
        bindir = pg_bindir()
        if bindir is None:
            pytest.skip(f"PostgreSQL is not installed and could not be installed ({why}); "
                        "the SQLite tests still ran")
    server = Postgres(bindir)
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    """Each test once on a fresh SQLite file and once on a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'feedback.db'}"
    return request.getfixturevalue("postgres").new_database()


@pytest.fixture
def live_server(database_url, tmp_path):
    server = Server(database_url, tmp_path / "server.log")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def chromium():
    """(chromium binary, chromedriver binary) from Debian's packages."""
    browser, driver = find_chromium()
    if not (browser and driver):
        why = apt_install("chromium", "chromium-driver")
        browser, driver = find_chromium()
        if not (browser and driver):
            pytest.skip(f"headless Chromium is not installed and could not be installed ({why})")
    return browser, driver

