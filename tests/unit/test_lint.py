"""ruff is part of the suite, so CI is red when the code is not clean."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import REPO


def test_ruff_clean() -> None:
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "braas_hpc", "braas_hpc_interactive",
                           "cluster_scripts", "tests", "examples"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
