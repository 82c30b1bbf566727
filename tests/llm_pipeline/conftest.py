"""Fixtures shared by the pipeline tests."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from allroads.llm.pipeline.cache import PACKAGE_ROOT


@pytest.fixture
def package_copy(tmp_path) -> Path:
    """A copy of the ``allroads`` package, for a cache whose ``code_root`` it is: editing the copy shows which stages
    an edit would re-run without touching the real source."""
    dst = tmp_path / "src" / "allroads"
    shutil.copytree(PACKAGE_ROOT, dst, ignore=shutil.ignore_patterns("__pycache__"))
    return dst
