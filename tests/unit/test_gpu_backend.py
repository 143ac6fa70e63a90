"""The GPU backend a job renders with: the partition's by default, or the user's choice, checked."""

from __future__ import annotations

from pathlib import Path

import pytest

from braas_hpc.core.errors import UsageError
from braas_hpc.core.spec import SubmitRequest, build_spec
from tests.helpers import REPO


def request(scene: Path, **values: object) -> SubmitRequest:
    return SubmitRequest(scene=scene, preset="karolina", frames="1-4", account="dd-1", **values)  # type: ignore[arg-type]


@pytest.fixture
def scene() -> Path:
    return REPO / "examples" / "sample" / "sample.blend"  # a real scene: its render settings are read


def test_the_partition_decides_unless_the_user_does(scene: Path) -> None:
    assert build_spec(request(scene, device="GPU"))[0].cycles_device == "CUDA"  # Karolina's A100s
    assert build_spec(request(scene, device="GPU", gpu_backend="optix"))[0].cycles_device == "OPTIX"
    assert build_spec(request(scene, device="GPU", gpu_backend="OPTIX+CPU"))[0].cycles_device == "OPTIX+CPU"
    assert build_spec(request(scene))[0].cycles_device == "CPU"


def test_a_bad_or_misplaced_backend_is_refused(scene: Path) -> None:
    with pytest.raises(UsageError, match="'VULKAN' is not one of CUDA, OPTIX, HIP, ONEAPI, METAL"):
        build_spec(request(scene, device="GPU", gpu_backend="VULKAN"))
    with pytest.raises(UsageError, match="GPU backend was given for a CPU job"):
        build_spec(request(scene, gpu_backend="CUDA"))
