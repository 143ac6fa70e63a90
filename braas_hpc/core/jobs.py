"""What a job is: the typed spec built once at the edge (CLI or panel), and the names of its files."""

from __future__ import annotations

import posixpath
import re
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import UsageError
from .scene_settings import FORMATS as IMAGE_FORMATS
from .split import missing_parts, part_offsets

DEVICES = ("CPU", "GPU")
# Frame files are named by us, so a remote listing can be checked against this before any local path
# is built from it.
# `\Z`, not `$`, in these patterns: `$` also matches before a trailing newline ("a@b.org\n").
FRAME_FILE = re.compile(r"^frame_([0-9]{6,7})\.(png|jpg|exr|tif)\Z")
# A movie of the frames (cluster_scripts/make_video.py names it), downloaded with them.
VIDEO_FILE = re.compile(r"^video-(h264|prores|av1)-[0-9]{1,4}(\.[0-9]{1,3})?fps\.(mp4|mov)\Z")
VIDEO_CODECS = ("h264", "prores", "av1")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
EMAIL = re.compile(r"^[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\Z")
# Values that go into scheduler directives: nothing a shell or a directive parser could read as syntax.
SAFE_VALUE = re.compile(r"^[A-Za-z0-9_.+-]*\Z")
PACK_MODES = ("packed", "dir")  # one packed .blend, or the .blend with its dependency tree
SHA256_HEX = re.compile(r"^[0-9a-f]{64}\Z")
STAMP = ".braas-installed"  # in a Blender `braas-hpc install` unpacked, once complete
# A shell function: the SHA-256 of a directory tree (every entry's type, mode, path and link target,
# then every file's SHA-256, in byte order), without the stamp. Written by install, checked by every
# job before it starts that Blender (so: sh only).
TREE_HASH_SH = ("braas_tree() { (cd -- \"$1\" && { find . -mindepth 1 ! -path ./" + STAMP + " "
                "-printf '%y %m %p %l\\n' | LC_ALL=C sort; find . -type f ! -path ./" + STAMP + " -print0 "
                "| LC_ALL=C sort -z | xargs -0 -r sha256sum --; } | sha256sum | cut -d ' ' -f 1); }")
MAX_RESOLUTION_PERCENTAGE = 1000  # Blender allows more; a tenfold render of a scene is already a mistake
MAX_SAMPLES = 16_777_216  # Cycles' own limit


def check_directive_values(**values: str) -> None:
    """Account, partition, QoS and e-mail go into scheduler directives: refuse anything else, naming the field."""
    for field_name, value in values.items():
        if field_name == "email":
            if value and not EMAIL.match(value):
                raise UsageError(f"e-mail address {value[:80]!r} is not valid (expected name@example.org)")
        elif not SAFE_VALUE.match(value):
            raise UsageError(f"{field_name} {value[:80]!r} is not valid: it may hold only letters, digits, "
                             "'_', '-', '.' and '+'")


@dataclass(frozen=True)
class JobSpec:
    name: str
    preset: str
    scene: str  # absolute local path of the user's .blend
    frames: tuple[int, ...]
    chunk: int = 1
    device: str = "CPU"
    walltime_min: int = 60
    max_parallel: int = 0  # array throttle; 0 = no limit
    image_format: str = "PNG"  # Blender's file_format identifier (IMAGE_FORMATS): the scene's, or the user's choice
    tasks: tuple[tuple[int, ...], ...] = field(default_factory=tuple)
    account: str = ""
    partition: str = ""  # partition (Slurm) or queue (PBS)
    qos: str = ""
    email: str = ""  # mail on end and failure, where the site sends mail
    memory_gb: int = 0  # per array task; 0: the site's default
    cycles_device: str = "CPU"  # CPU, CUDA, OPTIX, HIP, ONEAPI (from the partition)
    gpus: int = 0  # per array task
    cpus: int = 0  # per array task; 0: the scheduler's default
    whole_node: bool = False
    allow_scripts: bool = False  # run Python embedded in the .blend (drivers, startup scripts) on the cluster
    pack: str = "packed"  # one of PACK_MODES
    retries: int = 2  # rounds braas-hpc may add by itself for frames lost to failures (0: none)
    scene_name: str = ""  # the scene inside the .blend that renders; "": the one Blender opens it with
    resolution_percentage: int = 0  # 0: the scene's
    samples: int = 0  # 0: the scene's
    fps: float = 0.0  # the scene's frame rate, for movies of the frames; 0: not recorded (jobs of older releases)
    # The scene's colour management, for movies of EXR frames (scene-linear light made display-referred).
    view_transform: str = "Standard"
    look: str = "None"
    exposure: float = 0.0
    gamma: float = 1.0
    display_device: str = "sRGB"
    video: str = ""  # a movie the finish step makes on the cluster (a codec of VIDEO_CODECS); "": none
    # A split still (core.split): `frames` are its parts 1..N, all rendering scene frame `split_frame`, part K
    # `part_samples[K-1]` samples from sample `part_offsets[K-1]` on. Empty: an ordinary job.
    split_frame: int = 0
    part_samples: tuple[int, ...] = ()
    part_offsets: tuple[int, ...] = ()
    # A member of one animation over several clusters (core.group): the group's name. Its tasks claim their
    # chunk before rendering it (another cluster may have taken it), and its lost frames go back to the
    # group, not to a recovery round of its own. "": an ordinary job.
    group: str = ""

    @property
    def split(self) -> int:
        """The number of parts of a split still; 0 for an ordinary job."""
        return len(self.part_samples)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> JobSpec:
        """The spec `to_dict` gave (JSON has lists where the spec holds tuples)."""
        return cls(**{**data, "frames": tuple(data["frames"]), "tasks": tuple(tuple(t) for t in data["tasks"]),
                      "part_samples": tuple(data.get("part_samples", ())),
                      "part_offsets": tuple(data.get("part_offsets", ()))})

    @property
    def extension(self) -> str:
        return IMAGE_FORMATS[self.image_format]

    def validate(self) -> None:
        if self.device not in DEVICES:
            raise UsageError(f"device {self.device!r} is not one of {', '.join(DEVICES)}")
        if self.image_format not in IMAGE_FORMATS:
            raise UsageError(f"image format {self.image_format!r} is not one of {', '.join(IMAGE_FORMATS)}")
        if self.pack not in PACK_MODES:
            raise UsageError(f"pack mode {self.pack!r} is not one of {', '.join(PACK_MODES)}")
        if not 0 <= self.resolution_percentage <= MAX_RESOLUTION_PERCENTAGE:
            raise UsageError(f"resolution percentage must be between 1 and {MAX_RESOLUTION_PERCENTAGE}, "
                             f"got {self.resolution_percentage}")
        if not 0 <= self.samples <= MAX_SAMPLES:
            raise UsageError(f"samples must be between 1 and {MAX_SAMPLES}, got {self.samples}")
        if self.split and (self.part_offsets != part_offsets(self.part_samples) or min(self.part_samples) < 1
                           or self.frames != tuple(range(1, self.split + 1))):
            raise UsageError(f"a split still needs parts 1..N, each with one sample or more after the ones before; "
                             f"got parts {list(self.frames)}, samples {list(self.part_samples)}, first samples "
                             f"{list(self.part_offsets)}")
        if self.walltime_min < 1:
            raise UsageError(f"walltime must be at least 1 minute, got {self.walltime_min}")
        if self.max_parallel < 0:
            raise UsageError(f"max parallel tasks must be 0 (no limit) or more, got {self.max_parallel}")
        if self.video and self.video not in VIDEO_CODECS:
            raise UsageError(f"video codec {self.video!r} is not one of {', '.join(VIDEO_CODECS)}")
        if not 0 <= self.fps <= 1000:
            raise UsageError(f"frame rate must be between 1 and 1000 frames per second, got {self.fps}")
        if self.memory_gb < 0:
            raise UsageError(f"memory must be 0 (site default) or more GB, got {self.memory_gb}")
        check_directive_values(account=self.account, partition=self.partition, QoS=self.qos, email=self.email)


def frame_file_name(frame: int, extension: str) -> str:
    return f"frame_{frame:06d}.{extension}"


def make_job_name(scene: Path, project: str = "") -> str:
    """`<project or scene>-<UTC time>-<random>`: sortable, unique, and safe in paths and scheduler names."""
    stem = _UNSAFE.sub("_", project or scene.stem).strip("_")[:32] or "scene"
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return f"{stem}-{stamp}-{secrets.token_hex(2)}"


def store_dir(root: str) -> str:
    """`<root>/store`: uploaded files by content, shared by every job of the cluster."""
    return posixpath.join(root, "store")


def store_path(root: str, digest: str) -> str:
    """`<root>/store/<sha256[:2]>/<sha256>`; the two-character level keeps directories small."""
    if not SHA256_HEX.match(digest):
        raise ValueError(f"not a SHA-256 hex digest: {digest!r}")
    return posixpath.join(store_dir(root), digest[:2], digest)


@dataclass(frozen=True)
class JobPaths:
    """Every file of a job under its directory, named in one place (remote or local, POSIX paths)."""

    root: str  # <workdir>/braas-hpc-<user> (core.tree); older jobs keep the <workdir>/braas-hpc they had
    name: str

    @property
    def job_dir(self) -> str:
        return posixpath.join(self.root, "jobs", self.name)

    def _in_job(self, *parts: str) -> str:
        return posixpath.join(self.job_dir, *parts)

    @property
    def in_dir(self) -> str:
        return self._in_job("in")

    @property
    def scene(self) -> str:
        return self._in_job("in", "scene.blend")

    @property
    def out_dir(self) -> str:
        return self._in_job("out")

    @property
    def log_dir(self) -> str:
        return self._in_job("log")

    @property
    def status_dir(self) -> str:
        return self._in_job("status")

    @property
    def claims_dir(self) -> str:
        """A group member's chunk claims, one directory per chunk named by its first frame (render_task.py)."""
        return self._in_job("claims")

    @property
    def frames_file(self) -> str:
        return self.round_frames_file(0)

    @property
    def script(self) -> str:
        return self.round_script(0)

    def round_frames_file(self, round_: int) -> str:
        """Round 0 is the submission; each `resubmit` of missing frames is a new round."""
        return self._in_job("frames.txt" if round_ == 0 else f"frames-r{round_}.txt")

    def round_script(self, round_: int) -> str:
        return self._in_job("job.sh" if round_ == 0 else f"job-r{round_}.sh")

    @property
    def job_json(self) -> str:
        return self._in_job("job.json")

    @property
    def store_dir(self) -> str:
        return store_dir(self.root)

    def store_file(self, digest: str) -> str:
        return store_path(self.root, digest)

    def scripts_dir(self, version: str) -> str:
        return posixpath.join(self.root, "scripts", version)

    def render_task(self, version: str) -> str:
        return posixpath.join(self.scripts_dir(version), "render_task.py")


def frames_file_text(tasks: tuple[tuple[int, ...], ...]) -> str:
    """Line N holds the frames of array task N: the job maps its index through this, never by arithmetic."""
    return "".join(",".join(str(f) for f in task) + "\n" for task in tasks)


def missing_frames(spec: JobSpec, present: set[str]) -> list[int]:
    """Frames of the job whose files are not among `present` (file names in out/); a split still's parts."""
    if spec.split:
        return missing_parts(spec.split_frame, spec.frames, present)
    return [f for f in spec.frames if frame_file_name(f, spec.extension) not in present]
