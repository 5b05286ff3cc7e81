"""After the README's install, only the gmconv library is importable outside the checkout."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ROOT

pytestmark = pytest.mark.slow  # it starts a process

PROBE = """
import importlib.util

for name in ("gmconv", "data", "models", "engine"):
    spec = importlib.util.find_spec(name)
    print(name, spec.origin if spec else None)
"""


def test_framework_packages_do_not_shadow_other_projects(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=tmp_path, env=env, capture_output=True, text=True, check=True
    ).stdout
    found = dict(line.split(" ", 1) for line in out.strip().splitlines())
    assert Path(found["gmconv"]).resolve() == ROOT / "gmconv" / "__init__.py"
    for name in ("data", "models", "engine"):
        assert found[name] == "None" or not Path(found[name]).resolve().is_relative_to(ROOT), (name, found[name])
