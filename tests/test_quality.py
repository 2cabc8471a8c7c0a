"""The checks a reviewer would run: lint, types, and docs generated from the code."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from celery_reliable.settings import markdown_table

ROOT = Path(__file__).resolve().parent.parent


def _tool(name: str) -> str:
    path = shutil.which(name, path=str(Path(sys.executable).parent))
    if path is None:
        pytest.fail(f"{name} is not installed; pip install -e '.[test]'")
    return path


def test_ruff() -> None:
    result = subprocess.run(
        [_tool("ruff"), "check", "celery_reliable", "tests", "bench", "examples"],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict() -> None:
    result = subprocess.run([_tool("mypy")], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_layers_import_only_downwards() -> None:
    """The import contract in pyproject.toml ([tool.importlinter])."""
    result = subprocess.run([_tool("lint-imports")], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_settings_page_matches_the_settings_table() -> None:
    page = (ROOT / "docs" / "settings.md").read_text()
    assert markdown_table() in page, (
        "docs/settings.md is out of date: paste the output of "
        "`python -c 'from celery_reliable.settings import markdown_table as t; print(t())'`"
    )


def test_the_tests_the_docs_cite_exist() -> None:
    """docs/guarantees.md says which test proves each guarantee: a renamed or deleted
    test must not leave the claim standing on nothing. ``::name`` alone continues the
    file named before it."""
    import re

    missing = []
    for page in sorted((ROOT / "docs").glob("*.md")):
        current: Path | None = None
        for m in re.finditer(r"`(tests/[\w/]+\.py)(?:::(\w+))?`|`::(\w+)`", page.read_text()):
            path, name, continued = m.groups()
            if path:
                current = ROOT / path
                if not current.exists():
                    missing.append(f"{page.name}: {path}")
                    continue
            name = name or continued
            if name and (current is None or f"def {name}(" not in current.read_text()):
                missing.append(f"{page.name}: {current}::{name}")
    assert missing == [], missing
