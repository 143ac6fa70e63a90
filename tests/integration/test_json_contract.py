"""Every command's `--json` document, as the real CLI prints it on the test cluster (and on this
computer), checked against its schema (braas_hpc/cli_json.py, documented in docs/json.md): one JSON
object on stdout, `schema` first, no field the contract does not name, every required one there."""

from __future__ import annotations

import json
import time
from pathlib import Path

import jsonschema

from braas_hpc.cli_json import JSON_SCHEMA, SCHEMAS
from tests.conftest import run_cli
from tests.integration.test_keeper import write_preset
from tests.testbed import testbed as tb


def _document(verb: str, *args: str, code: int = 0) -> dict:
    done = run_cli(*args, "--json")
    assert done.returncode == code, (args, done.returncode, done.stderr)
    document = json.loads(done.stdout)  # the whole of stdout is one document
    assert next(iter(document)) == "schema" and document["schema"] == JSON_SCHEMA, document
    jsonschema.validate(document, SCHEMAS[verb])
    return document


def test_every_command_prints_its_documented_document(testbed: tb.Testbed, sample_scene: Path,
                                                      tmp_path: Path) -> None:
    scene = str(sample_scene)
    checked = set()

    def check(verb: str, *args: str, code: int = 0) -> dict:
        checked.add(verb)
        return _document(verb, *args, code=code)

    check("presets", "presets")
    check("presets add", "presets", "add", "tb-json", "--base", "karolina", "--account", "A")
    check("doctor", "doctor", "testbed")
    check("test", "test", "testbed")
    check("workdir", "workdir", "testbed")
    check("workdir --set", "workdir", "testbed", "--set", testbed.workdir)
    check("install", "install", "testbed")
    check("submit --dry-run", "submit", scene, "--preset", "testbed", "--frames", "1-2", "--dry-run")
    job = check("submit", "submit", scene, "--preset", "testbed", "--frames", "1-2")["job"]
    check("status", "status", job)
    check("wait", "wait", job, "--timeout", "600")
    check("logs", "logs", job)
    check("download", "download", job, "--dest", str(tmp_path / "frames"))
    check("video", "video", job, "--dest", str(tmp_path / "frames"))
    slow = check("submit", "submit", scene, "--preset", "testbed", "--frames", "1-4", "--max-parallel", "1")["job"]
    time.sleep(1)
    check("cancel", "cancel", slow)
    check("resubmit", "resubmit", slow)
    check("cancel", "cancel", slow)
    check("gc", "gc", "testbed")
    check("keeper", "keeper", "status")
    check("forget", "forget", job)
    check("interactive status", "interactive", "status")
    check("render", "render", scene, "--frames", "1", "--out", str(tmp_path / "here"))
    check("extension build", "extension", "build", "--out", str(tmp_path / "ext"), "--platform", "linux-x64")
    failed = check("error", "wait", "no-such-job", code=2)
    assert failed["error"]["kind"] == "usage"

    # `interactive start` and `tunnel` hold a node: their documents are checked where those run
    # (test_interactive.py, test_gridengine.py); `submit --estimate` and `allocation` need a preset with an
    # allocation command (test_estimate_cluster.py); `dashboard` serves until Ctrl+C (test_dashboard_guard.py);
    # a job over several clusters needs two presets (test_group.py checks each of its documents);
    # here only that no other command was left out.
    left = {"interactive start", "interactive tunnel", "submit --estimate", "allocation", "dashboard",
            *(verb for verb in SCHEMAS if verb.endswith("(group)"))}
    assert set(SCHEMAS) - checked == left, set(SCHEMAS) - checked


def test_a_status_entry_of_a_cluster_that_did_not_answer_follows_the_contract(testbed: tb.Testbed,
                                                                               sample_scene: Path) -> None:
    write_preset(testbed, "tb-json-gone")
    job = _document("submit", "submit", str(sample_scene), "--preset", "tb-json-gone", "--frames", "1")["job"]
    write_preset(testbed, "tb-json-gone", port=1)  # nothing listens on port 1
    document = _document("status", "status", job, code=3)
    (entry,) = document["jobs"]
    assert entry["error"]["kind"] == "connection" and entry["missing"] is None and entry["frames_done"] is None
    assert run_cli("cancel", job).returncode == 3  # a cluster that cannot be reached
