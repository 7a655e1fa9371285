"""The import rules of the layout: no library module imports the apps (each package imported in a fresh
interpreter, then sys.modules inspected), and the apps stay thin."""

import subprocess
import sys
from pathlib import Path

import pytest

import guidance

PACKAGE = Path(guidance.__file__).parent
LIBRARY = sorted(
    ".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
    for p in PACKAGE.rglob("*.py") if "apps" not in p.relative_to(PACKAGE).parts)


@pytest.mark.parametrize("chunk", [LIBRARY[i::4] for i in range(4)], ids=lambda c: c[0])
def test_no_library_module_imports_the_apps(chunk):
    code = ("import importlib, sys\n"
            f"for m in {chunk!r}:\n    importlib.import_module(m)\n"
            "print(sorted(m for m in sys.modules if m.startswith('guidance.apps')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"{chunk} pulled in {out}"


def test_apps_are_thin():
    """An app parses its config, calls the library and prints: no app module holds a long body (common.py is the
    apps' Hydra plumbing: the command-line checks before Hydra writes anything)."""
    for app in (PACKAGE / "apps").glob("*.py"):
        if app.name == "common.py":
            continue
        assert len(app.read_text().splitlines()) <= 80, f"{app.name} holds library code"
