from __future__ import annotations

from pathlib import Path

import pytest

from braas_hpc.core.errors import PresetError
from braas_hpc.core.presets import load_preset, preset_files

GOOD = """
name = "mysite"
scheduler = "slurm"
host = "login.example.org"
user = "me"
workdir = "/scratch/me"
partition_cpu = "cpu"
env = ["module load blender"]
"""


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("BRAAS_HPC_CONFIG_DIR", str(tmp_path))
    (tmp_path / "presets").mkdir()
    return tmp_path / "presets"


def test_builtin_local_preset(config: Path) -> None:
    local = load_preset("local")
    assert local.is_local and local.scheduler == "local"


def test_user_preset_is_found_and_typed(config: Path) -> None:
    (config / "mysite.toml").write_text(GOOD)
    preset = load_preset("mysite")
    assert preset.host == "login.example.org" and preset.port == 22
    assert preset.env == ("module load blender",)
    assert "mysite" in preset_files()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ('colour = "blue"\n', "unknown key"),
        ("port = \"22\"\n", "port must be of type int"),
        ('ssh_backend = "telnet"\n', "ssh_backend"),
    ],
)
def test_bad_preset_values(config: Path, change: str, message: str) -> None:
    (config / "mysite.toml").write_text(GOOD + change)
    with pytest.raises(PresetError, match=message):
        load_preset("mysite")


def test_relative_workdir_is_refused(config: Path) -> None:
    (config / "mysite.toml").write_text(GOOD.replace('"/scratch/me"', '"scratch"'))
    with pytest.raises(PresetError, match="absolute"):
        load_preset("mysite")


def test_name_must_match_file(config: Path) -> None:
    (config / "other.toml").write_text(GOOD)
    with pytest.raises(PresetError, match="must match the file name"):
        load_preset("other")


def test_unknown_preset_lists_known_ones(config: Path) -> None:
    with pytest.raises(PresetError, match="unknown preset 'nope'; known presets: .*karolina.*local"):
        load_preset("nope")


BAD_HOSTS = ["*", "login*", "log?n", "login\nx", "login x", "login\t", "a,b", "!a", "[a]:22", "|1|abc|def",
             "-oProxyCommand=x", "@revoked", "#h", "h#", "a\0b", "é.example.org", "x" * 300]


@pytest.mark.parametrize("host", BAD_HOSTS)
def test_a_host_that_is_a_pattern_or_breaks_a_line_is_refused(config: Path, host: str) -> None:
    """`*` written into known_hosts trusted every host; a newline would add a line of its own."""
    escaped = host.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t").replace("\0", "\\u0000")
    (config / "mysite.toml").write_text(GOOD.replace('"login.example.org"', f'"{escaped}"'))
    with pytest.raises(PresetError, match=r"host .* must be a host name or address"):
        load_preset("mysite")


@pytest.mark.parametrize("host", ["login.example.org", "10.0.0.1", "::1", "2001:db8::5", "my_alias", "Login-1"])
def test_host_names_and_addresses_are_accepted(config: Path, host: str) -> None:
    (config / "mysite.toml").write_text(GOOD.replace('"login.example.org"', f'"{host}"'))
    assert load_preset("mysite").host == host


PARTS = """
[partitions.cpu]
kind = "cpu"

[partitions.big]
kind = "cpu"
whole_node = true
"""


def test_finish_keys_are_read(config: Path) -> None:
    (config / "mysite.toml").write_text(GOOD + "finish_env = []\n" + PARTS + 'finish = "cpu"\n')
    preset = load_preset("mysite")
    assert preset.finish_env == () and preset.partitions["big"].finish == "cpu"
    (config / "mysite.toml").write_text(GOOD + PARTS)
    assert load_preset("mysite").finish_env is None  # absent: the finish step runs `env`


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ('finish = "nowhere"\n', r"partitions.big: finish 'nowhere' is not in \[partitions\] \(cpu, big\)"),
        ("finish = 3\n", "partitions.big: finish must be of type str, got 3"),
    ],
)
def test_a_finish_partition_must_be_in_the_table(config: Path, change: str, message: str) -> None:
    (config / "mysite.toml").write_text(GOOD + PARTS + change)
    with pytest.raises(PresetError, match=message):
        load_preset("mysite")


def test_a_finish_partition_may_not_send_it_on(config: Path) -> None:
    chain = GOOD + PARTS.replace('kind = "cpu"\n\n', 'kind = "cpu"\nfinish = "third"\n\n', 1) + \
        'finish = "cpu"\n[partitions.third]\nkind = "cpu"\n'
    (config / "mysite.toml").write_text(chain)
    with pytest.raises(PresetError, match="partitions.big: finish 'cpu' sends its own finish step elsewhere"):
        load_preset("mysite")


@pytest.mark.parametrize(("value", "message"), [
    ('"module load x"', r"finish_env must be of type tuple\[str, \.\.\.\] \| None"),
    ('["a", 1]', "finish_env must be of type"),
    ('["module load x\\nrm -rf ~"]', "single lines"),
])
def test_bad_finish_env_is_refused(config: Path, value: str, message: str) -> None:
    (config / "mysite.toml").write_text(GOOD + f"finish_env = {value}\n")
    with pytest.raises(PresetError, match=message):
        load_preset("mysite")
