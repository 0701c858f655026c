"""Shared setup of the tests on booted machines (scripts/machines).

Run as root with the project's venv:  .venv/bin/python -m pytest -q tests/hosts
"""

from __future__ import annotations

import signal


def pytest_configure(config):
    """Turn SIGTERM (a CI timeout, `kill`) into KeyboardInterrupt, so pytest still runs the fixture
    teardowns and the machines are taken down instead of being left running."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)
