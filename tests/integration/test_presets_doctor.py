"""Setting up a cluster without writing TOML: `presets add` writes the user's own preset on top of a
built-in, `presets` says which presets are ready and what each needs, and `doctor` asks the cluster
(login, account, working directory, scripts, Blender) and says how to fix what fails."""

from __future__ import annotations

import json
import os
import socket
import tomllib
from pathlib import Path

from tests.conftest import run_cli
from tests.integration.test_keeper import write_preset
from tests.testbed import testbed as tb


def _presets_dir() -> Path:
    return Path(os.environ["BRAAS_HPC_CONFIG_DIR"]) / "presets"


def test_presets_add_writes_the_users_own_file_and_presets_says_what_it_still_needs(
        user_dirs: dict[str, str]) -> None:
    added = run_cli("presets", "add", "kar", "--base", "karolina", "--account", "OPEN-00-00", "--user", "me")
    assert added.returncode == 0, added.stderr
    path = _presets_dir() / "kar.toml"
    assert tomllib.loads(path.read_text()) == {"name": "kar", "base": "karolina", "account": "OPEN-00-00",
                                               "user": "me"}
    assert "to do, workdir" in added.stdout and "braas-hpc workdir kar" in added.stdout, added.stdout
    listed = json.loads(run_cli("presets", "--json").stdout)["presets"]
    mine = next(p for p in listed if p["name"] == "kar")
    assert mine["yours"] and mine["ready"] == "needs workdir, host key", mine
    assert not any("source" in p or any(str(v).startswith("/") and "site-packages" in str(v) for v in p.values())
                   for p in listed)
    karolina = next(p for p in listed if p["name"] == "karolina")
    fixes = {c["what"]: c["fix"] for c in karolina["checks"]}
    assert fixes["account"].startswith("braas-hpc presets add karolina --base karolina --account"), fixes
    assert "local" in [p["name"] for p in listed if p["ready"] == "ready"]
    shown = run_cli("presets")
    assert shown.returncode == 0 and "kar (yours)" in shown.stdout, shown.stdout


def test_presets_add_refuses_what_would_be_lost_or_invalid(user_dirs: dict[str, str]) -> None:
    assert run_cli("presets", "add", "kar", "--base", "karolina", "--account", "A").returncode == 0
    before = (_presets_dir() / "kar.toml").read_text()
    again = run_cli("presets", "add", "kar", "--base", "karolina", "--account", "B")
    assert again.returncode == 2 and "already exists" in again.stderr and "--force" in again.stderr
    bad = run_cli("presets", "add", "kar", "--base", "karolina", "--workdir", "relative/dir", "--force")
    assert bad.returncode == 2 and "workdir" in bad.stderr, bad.stderr
    assert (_presets_dir() / "kar.toml").read_text() == before
    unknown = run_cli("presets", "add", "x1", "--base", "nosuchsite")
    assert unknown.returncode == 2 and "karolina" in unknown.stderr, unknown.stderr
    assert not (_presets_dir() / "x1.toml").exists()
    replaced = run_cli("presets", "add", "kar", "--base", "karolina", "--account", "B", "--force")
    assert replaced.returncode == 0 and tomllib.loads((_presets_dir() / "kar.toml").read_text())["account"] == "B"


def test_doctor_finds_the_test_cluster_ready(testbed: tb.Testbed) -> None:
    done = run_cli("doctor", "testbed", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["ready"] == "ready"
    assert {c["what"]: c["ok"] for c in report["checks"]} == {
        "host key": True, "login": True, "account": True, "workdir": True, "scripts": True, "blender": True}


def test_doctor_says_what_is_wrong_and_how_to_fix_it(testbed: tb.Testbed) -> None:
    write_preset(testbed, "tb-doctor", account="someone-elses", workdir="/nonexistent/work",
                 blender="/nonexistent/blender")
    done = run_cli("doctor", "tb-doctor", "--json")
    assert done.returncode == 1, done.stderr
    checks = {c["what"]: c for c in json.loads(done.stdout)["checks"]}
    assert checks["login"]["ok"] and not checks["account"]["ok"] and not checks["workdir"]["ok"], checks
    assert "not one of yours: braas" in checks["account"]["found"]
    assert "set account in" in checks["account"]["fix"] and "tb-doctor.toml" in checks["account"]["fix"]
    assert checks["blender"]["ok"] is False and "braas-hpc install tb-doctor" in checks["blender"]["fix"]
    text = run_cli("doctor", "tb-doctor")
    assert text.returncode == 1 and "FAIL account" in text.stdout and "to fix:" in text.stdout, text.stdout

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        write_preset(testbed, "tb-doctor", port=closed.getsockname()[1])
        down = run_cli("doctor", "tb-doctor", "--json")
    assert down.returncode == 1
    login = next(c for c in json.loads(down.stdout)["checks"] if c["what"] == "login")
    assert login["ok"] is False and "refused" in login["found"] and "VPN" in login["fix"], login
