"""Shared helpers for the tests against PyPI procstar 1.1.0 (the real Apsis peer)."""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# procstar.testing starts the binary named by PROCSTAR.
os.environ.setdefault("PROCSTAR", str(ROOT / "target" / "debug" / "chaperone"))


@pytest.fixture
def chaperone():
    return os.environ["PROCSTAR"]
