"""Where braas-hpc keeps its files on the user's machine.

Both directories can be moved with an environment variable, which tests use to stay out of the
user's real configuration.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

APP_NAME = "braas-hpc"


def config_dir() -> Path:
    """User configuration: presets/ (one TOML file per cluster)."""
    override = os.environ.get("BRAAS_HPC_CONFIG_DIR")
    return Path(override) if override else Path(platformdirs.user_config_dir(APP_NAME))


def data_dir() -> Path:
    """User data: the job registry and the jobs rendered on the `local` preset."""
    override = os.environ.get("BRAAS_HPC_DATA_DIR")
    return Path(override) if override else Path(platformdirs.user_data_dir(APP_NAME))


def user_presets_dir() -> Path:
    return config_dir() / "presets"
