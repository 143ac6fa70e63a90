"""A `blender` command line on top of the `bpy` module (the subset job scripts use).

Machines without a Blender executable (the test cluster, the `local` preset) still have the
`bpy` wheel, so this script stands in for `blender`:

    python3 bpy_blender.py -b scene.blend -o //out/frame_#### -F PNG -f 1,3..4
    python3 bpy_blender.py -b scene.blend -P job.py -- --job-arg value

Arguments are handled like Blender does: settings (`-b`, `-t`, `-y`, `--debug*`, ...) first,
wherever they are, then everything else strictly in order, stopping at `--`.  Rendering goes
through `bpy.ops.render.render(animation=True)`, which is the code path Blender's own `-f` and
`-a` use, so output paths (`//`, `#`), file formats and the `Saved: '...'` lines match.

Deliberately stricter than Blender, so a job never silently renders the wrong thing: unknown
options, missing or malformed values, an unknown scene or format and failed renders print an
error and exit 1 (Blender prints a warning and carries on for most of these), and the whole
command line is checked before anything runs.

This file is copied on its own to other machines: it uses the standard library and `bpy` only.
"""

from __future__ import annotations

import os
import re
import sys
import traceback
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

# Imported by load_bpy(): importing this file (to copy it, test the parsers) must not need bpy.
bpy: Any = None

# Blender's limits (MINAFRAME / MAXFRAME / BLENDER_MAX_THREADS); bpy's scene frame range starts
# at 0, which matters for -f with end-relative frames.
MIN_FRAME = -1048574
MAX_FRAME = 1048574
MAX_THREADS = 1024

# Spellings -> canonical option name.
ALIASES = {
    "-b": "--background",
    "-P": "--python",
    "-E": "--engine",
    "-o": "--render-output",
    "-F": "--render-format",
    "-x": "--use-extension",
    "-t": "--threads",
    "-s": "--frame-start",
    "-e": "--frame-end",
    "-j": "--frame-jump",
    "-f": "--render-frame",
    "-a": "--render-anim",
    "-S": "--scene",
    "-y": "--enable-autoexec",
    "-Y": "--disable-autoexec",
    "-d": "--debug",
    "-v": "--version",
    "-h": "--help",
    "-q": "--quiet",
}

# Settings apply to the whole run wherever they appear (Blender reads them in an earlier pass).
SETTING_FLAGS = {
    "--background",
    "--factory-startup",
    "-noaudio",
    "--enable-autoexec",
    "--disable-autoexec",
    "--offline-mode",
    "--online-mode",
    "--quiet",
    "--version",
    "--help",
    "--disable-crash-handler",
    "--disable-abort-handler",
    "--python-use-system-env",
}
SETTING_VALUES = {
    "--threads",
    "--debug-value",
    "--debug-gpu-shader-source",
    "--debug-gpu-scope-capture",
}

# Actions run in command-line order.
ACTION_VALUES = {
    "--python",
    "--python-expr",
    "--python-exit-code",
    "--engine",
    "--render-output",
    "--render-format",
    "--use-extension",
    "--frame-start",
    "--frame-end",
    "--frame-jump",
    "--render-frame",
    "--scene",
}
ACTION_FLAGS = {"--render-anim"}
OPEN_FILE = "<file>"

# Blender's -F names that differ from the RNA enum; RNA names are accepted too.
CLI_FORMATS = {
    "TGA": "TARGA",
    "RAWTGA": "TARGA_RAW",
    "JP2": "JPEG2000",
    "EXR": "OPEN_EXR",
    "MULTILAYER": "OPEN_EXR_MULTILAYER",
}

# EEVEE is BLENDER_EEVEE_NEXT in 4.2-4.5 and BLENDER_EEVEE before and after.
ENGINE_ALIASES = {
    "BLENDER_EEVEE": "BLENDER_EEVEE_NEXT",
    "BLENDER_EEVEE_NEXT": "BLENDER_EEVEE",
}

HELP = """\
Usage: bpy_blender.py [args ...] [file] [args ...] [-- script args ...]
A Blender command line running on the bpy module. Supported arguments:
  -b, --background              accepted (always background)
  FILE.blend                    open the blend-file
  -P, --python FILE             run a Python script
  --python-expr EXPR            run a Python expression
  --python-exit-code N          exit with N when a script raises
  -E, --engine NAME             render engine ('-E help' lists them)
  -o, --render-output PATH      render output path ('//' and '#' work)
  -F, --render-format FORMAT    output format (PNG, JPEG, OPEN_EXR, ...)
  -x, --use-extension 0|1       add the file extension
  -t, --threads N               render threads, 0 for all cores
  -s, --frame-start N           start frame (+N / -N relative)
  -e, --frame-end N             end frame (+N / -N relative)
  -j, --frame-jump N            frame step
  -f, --render-frame SPEC       render frames: 1 / 1,5 / 10..12 / +N / -N
  -a, --render-anim             render start..end by step
  -S, --scene NAME              make NAME the active scene
  -y, --enable-autoexec         let blend-files loaded later run their scripts
  -Y, --disable-autoexec        do not
  -d, --debug, --debug-*        set the matching bpy.app.debug* flags
  --debug-value N               bpy.app.debug_value
  -q, --quiet                   no version banner / 'Blender quit'
  --factory-startup, -noaudio, --offline-mode
                                accepted (the bpy module already behaves so)
  -v, --version                 print the version and exit
  --                            the rest is for scripts (sys.argv)
"""


class Exit(Exception):
    """Stop processing arguments and leave with `code`, printing `message` to stderr."""

    def __init__(self, code: int, message: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Action:
    option: str  # canonical name, or OPEN_FILE
    value: str | None
    spelled: str  # as typed, for messages


@dataclass
class Settings:
    threads: int | None = None
    autoexec: bool | None = None
    quiet: bool = False
    version: bool = False
    help: bool = False
    debug_flags: list[str] = field(default_factory=list)
    debug_value: int | None = None


@dataclass
class State:
    settings: Settings
    python_exit_code: int = 0


# --------------------------------------------------------------------------------------------
# Parsing (no bpy needed)


def parse_int(text: str, lo: int = -(2**31), hi: int = 2**31 - 1) -> int:
    """A plain integer within [lo, hi]; ValueError with Blender's wording otherwise."""
    if not re.fullmatch(r"[+-]?\d+", text):
        raise ValueError("not a number")
    value = int(text)
    if not lo <= value <= hi:
        raise ValueError("exceeds range")
    return value


def parse_relative(text: str, pos: int, neg: int) -> int:
    """Blender's relative frame: '+N' is pos + N, '-N' is neg - N + 1, else N; clamped."""
    match = re.fullmatch(r"([+-]?)(\d+)", text)
    if not match:
        raise ValueError("not a number")
    sign, number = match.group(1), int(match.group(2))
    value = pos + number if sign == "+" else neg - number + 1 if sign == "-" else number
    return max(MIN_FRAME, min(MAX_FRAME, value))


def parse_frame_spec(spec: str, start: int, end: int) -> list[tuple[int, int]]:
    """'1,3..4,+2,-1' -> inclusive (first, last) ranges; '+N'/'-N' are start/end relative."""
    ranges = []
    for part in spec.split(","):
        if not part:
            raise ValueError("incorrect comma use")
        first, sep, last = part.partition("..")
        if sep:
            ranges.append((parse_relative(first, start, end), parse_relative(last, start, end)))
        else:
            frame = parse_relative(part, start, end)
            ranges.append((frame, frame))
    return ranges


def split_scripts_args(args: list[str]) -> list[str]:
    """Arguments for us: everything before the first `--`."""
    return args[: args.index("--")] if "--" in args else list(args)


def canonical(arg: str) -> str:
    return ALIASES.get(arg, arg)


def check_value(option: str, value: str) -> None:
    """Reject malformed values before anything runs (relative frames need the scene later)."""
    if option == "--threads":
        parse_int(value, 0, MAX_THREADS)
    elif option == "--python-exit-code":
        parse_int(value, 0, 255)
    elif option in ("--frame-jump", "--debug-value"):
        parse_int(value)
    elif option in ("--frame-start", "--frame-end"):
        parse_relative(value, 0, 0)
    elif option == "--render-frame":
        parse_frame_spec(value, 0, 0)
    elif option == "--use-extension" and value[:1] not in ("0", "1"):
        raise ValueError("expected 0 or 1")


def apply_setting(settings: Settings, option: str, value: str | None) -> None:
    if option == "--threads" and value is not None:
        settings.threads = int(value)
    elif option == "--debug-value" and value is not None:
        settings.debug_value = int(value)
    elif option in ("--enable-autoexec", "--disable-autoexec"):
        settings.autoexec = option == "--enable-autoexec"
    elif option in ("--quiet", "--version", "--help"):
        setattr(settings, option[2:], True)
    elif option.startswith("--debug"):
        settings.debug_flags.append(option)


def takes_value(option: str) -> bool:
    return option in SETTING_VALUES or option in ACTION_VALUES


def scan(args: list[str]) -> tuple[Settings, list[Action]]:
    """Split our arguments into settings and ordered actions; Exit(1) on anything unknown."""
    settings = Settings()
    actions: list[Action] = []
    error: str | None = None
    i = 0
    while i < len(args):
        spelled = args[i]
        option = canonical(spelled)
        value = None
        if takes_value(option):
            if i + 1 >= len(args):
                error = error or f"Error: '{spelled}' needs a value"
                break
            value = args[i + 1]
            try:
                check_value(option, value)
            except ValueError as err:
                error = error or f"Error: {err} '{spelled} {value}'"
            i += 1
        i += 1
        if option in SETTING_FLAGS or option in SETTING_VALUES or option.startswith("--debug"):
            apply_setting(settings, option, value)
        elif option in ACTION_VALUES or option in ACTION_FLAGS:
            actions.append(Action(option, value, spelled))
        elif spelled.startswith("-"):
            error = error or f"Error: unknown argument {spelled}"
        else:
            actions.append(Action(OPEN_FILE, spelled, spelled))
    # Like Blender, -v / -h win over everything else on the line.
    if error and not (settings.version or settings.help):
        raise Exit(1, error)
    return settings, actions


# --------------------------------------------------------------------------------------------
# Helpers around bpy


def flush() -> None:
    """Keep our output in order with what Blender's C code prints."""
    sys.stdout.flush()
    sys.stderr.flush()


def version_line() -> str:
    return f"Blender {bpy.app.version_string} (bpy module)"


def current_scene() -> Any:
    scene = bpy.context.scene
    if scene is None:
        raise Exit(1, "Error: no scene loaded")
    return scene


def apply_threads(settings: Settings) -> None:
    """Blender's -t is global: apply it to every scene, whenever files change or we render."""
    if settings.threads is None:
        return
    for scene in bpy.data.scenes:
        if scene.library is not None:
            continue
        if settings.threads == 0:
            scene.render.threads_mode = "AUTO"
        else:
            scene.render.threads_mode = "FIXED"
            scene.render.threads = settings.threads


def apply_debug(settings: Settings) -> None:
    """Turn --debug-X into bpy.app.debug_X where bpy has it; the rest are accepted as no-ops."""
    names: list[str] = []
    for option in settings.debug_flags:
        if option == "--debug-all":
            names += [n for n in dir(bpy.app) if n.startswith("debug") and n != "debug_value"]
        else:
            names.append(option[2:].replace("-", "_"))
    for name in names:
        if isinstance(getattr(bpy.app, name, None), bool):
            try:
                setattr(bpy.app, name, True)
            except (AttributeError, TypeError):
                pass  # read-only in this build
    if settings.debug_value is not None:
        bpy.app.debug_value = settings.debug_value


def engine_names(scene: Any) -> list[str]:
    """The registered engines: bpy lists them in the error for an unknown one."""
    try:
        scene.render.engine = "__BPY_BLENDER_NO_SUCH_ENGINE__"
    except TypeError as err:
        return re.findall(r"'([^']+)'", str(err).rpartition(" in ")[2])
    return []


@contextmanager
def frame_range(scene: Any, start: int, end: int) -> Iterator[None]:
    """Temporarily render only start..end; set start first because RNA keeps start <= end."""
    old_start, old_end = scene.frame_start, scene.frame_end
    scene.frame_start = start
    scene.frame_end = end
    try:
        yield
    finally:
        scene.frame_start = old_start
        scene.frame_end = old_end


def render_animation(state: State) -> None:
    """Render the scene's frame range and write the files, as Blender's RE_RenderAnim does."""
    apply_threads(state.settings)
    flush()
    try:
        result = bpy.ops.render.render(animation=True)
    except RuntimeError as err:
        raise Exit(1, str(err).strip()) from None
    finally:
        flush()
    if "FINISHED" not in result:
        raise Exit(1, f"Error: render did not finish ({', '.join(sorted(result))})")


# --------------------------------------------------------------------------------------------
# Running Python


def system_exit_code(exc: SystemExit) -> int:
    """What the Python interpreter would exit with for this SystemExit."""
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)
    return 1


def print_script_error(exc: BaseException) -> None:
    """The traceback without this launcher's own frames, like Blender shows it."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    traceback.print_exception(type(exc), exc, tb)


def run_code(state: State, source: str | bytes, filename: str, what: str) -> None:
    """Run source as `__main__` (a fresh module, like Blender); SystemExit ends the launcher."""
    module = types.ModuleType("__main__")
    module.__file__ = filename
    saved_main = sys.modules.get("__main__")
    sys.modules["__main__"] = module
    flush()
    try:
        exec(compile(source, filename, "exec"), module.__dict__)
    except SystemExit as exc:
        raise Exit(system_exit_code(exc)) from None
    except Exception as exc:
        print_script_error(exc)
        script_failed(state, what)
    finally:
        if saved_main is not None:
            sys.modules["__main__"] = saved_main
        flush()


def script_failed(state: State, what: str) -> None:
    if state.python_exit_code:
        raise Exit(state.python_exit_code, f"\nError: script failed, {what}, exiting.")


# --------------------------------------------------------------------------------------------
# Actions, in command-line order


def do_open_file(state: State, action: Action) -> None:
    # Absolute, so relative libraries and '//' resolve from the file itself (as Blender does).
    kwargs: dict[str, Any] = {"filepath": os.path.abspath(str(action.value)), "load_ui": False}
    if state.settings.autoexec is not None:
        kwargs["use_scripts"] = state.settings.autoexec
    flush()
    try:
        bpy.ops.wm.open_mainfile(**kwargs)
    except RuntimeError as err:
        raise Exit(1, str(err).strip()) from None
    apply_threads(state.settings)


def do_python(state: State, action: Action) -> None:
    path = os.path.abspath(str(action.value))
    what = f"file: '{action.value}'"
    try:
        with open(path, "rb") as handle:
            source = handle.read()
    except OSError as err:
        print(f'Error: Python file "{path}" could not be opened: {err.strerror}', file=sys.stderr)
        script_failed(state, what)
        return
    run_code(state, source, path, what)


def do_python_expr(state: State, action: Action) -> None:
    run_code(state, str(action.value), "<expr as string>", f"expr: '{action.value}'")


def do_python_exit_code(state: State, action: Action) -> None:
    state.python_exit_code = int(str(action.value))


def do_engine(state: State, action: Action) -> None:
    scene = current_scene()
    name = str(action.value)
    available = engine_names(scene)
    if name == "help":
        print("Blender Engine Listing:")
        for engine in available:
            print(f"\t{engine}")
        raise Exit(0)
    for candidate in (name, ENGINE_ALIASES.get(name)):
        if candidate in available:
            scene.render.engine = candidate
            return
    raise Exit(1, f"\nError: engine not found '{name}'")


def do_render_output(state: State, action: Action) -> None:
    current_scene().render.filepath = str(action.value)


def do_render_format(state: State, action: Action) -> None:
    name = CLI_FORMATS.get(str(action.value), str(action.value))
    try:
        current_scene().render.image_settings.file_format = name
    except TypeError:
        raise Exit(
            1,
            f"\nError: Format '{action.value}' from '-F / --render-format' not known or not "
            "compiled in this release.",
        ) from None


def do_use_extension(state: State, action: Action) -> None:
    current_scene().render.use_file_extension = str(action.value).startswith("1")


def do_frame_start(state: State, action: Action) -> None:
    scene = current_scene()
    start = scene.frame_start
    scene.frame_start = parse_relative(str(action.value), start, start - 1)


def do_frame_end(state: State, action: Action) -> None:
    scene = current_scene()
    end = scene.frame_end
    scene.frame_end = parse_relative(str(action.value), end, end - 1)


def do_frame_jump(state: State, action: Action) -> None:
    current_scene().frame_step = max(1, min(MAX_FRAME, int(str(action.value))))


def do_render_frame(state: State, action: Action) -> None:
    scene = current_scene()
    ranges = parse_frame_spec(str(action.value), scene.frame_start, scene.frame_end)
    for first, last in ranges:
        if first > last:
            print(f"\nWarning: negative range ignored '{action.spelled} {action.value}'.",
                  file=sys.stderr)
        for frame in range(first, last + 1):
            if frame < 0:
                raise Exit(1, f"Error: frame {frame} is negative, bpy cannot render it")
            # A one-frame animation render: Blender's -f does the same, so '#' is substituted.
            with frame_range(scene, frame, frame):
                render_animation(state)


def do_render_anim(state: State, action: Action) -> None:
    current_scene()
    render_animation(state)


def do_scene(state: State, action: Action) -> None:
    scene = bpy.data.scenes.get(str(action.value))
    if scene is None:
        raise Exit(1, f"Error: Can't find scene: '{action.value}'")
    window = bpy.context.window
    if window is None and bpy.context.window_manager.windows:
        window = bpy.context.window_manager.windows[0]
    if window is None:
        raise Exit(1, "Error: no window to make the scene active in")
    # The window's scene is what bpy.context.scene, later scripts and renders use.
    window.scene = scene


HANDLERS: dict[str, Callable[[State, Action], None]] = {
    OPEN_FILE: do_open_file,
    "--python": do_python,
    "--python-expr": do_python_expr,
    "--python-exit-code": do_python_exit_code,
    "--engine": do_engine,
    "--render-output": do_render_output,
    "--render-format": do_render_format,
    "--use-extension": do_use_extension,
    "--frame-start": do_frame_start,
    "--frame-end": do_frame_end,
    "--frame-jump": do_frame_jump,
    "--render-frame": do_render_frame,
    "--render-anim": do_render_anim,
    "--scene": do_scene,
}


# --------------------------------------------------------------------------------------------
# Entry point


def load_bpy() -> None:
    """Import bpy only once the command line is known good: the import takes about a second."""
    global bpy
    if bpy is not None:
        return
    try:
        import bpy as bpy_module
    except ImportError as err:
        raise Exit(1, f"Error: the bpy module is needed ({err}); try 'pip install bpy'") from None
    bpy = bpy_module


def run(args: list[str]) -> int:
    settings, actions = scan(split_scripts_args(args))
    if settings.help:
        print(HELP, end="")
        return 0
    load_bpy()
    if settings.version:
        print(version_line())
        return 0
    if not settings.quiet:
        print(version_line())
    apply_debug(settings)
    apply_threads(settings)
    state = State(settings)
    for action in actions:
        HANDLERS[action.option](state, action)
    if not settings.quiet:
        print("\nBlender quit")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run a Blender command line; argv excludes the program name (default: sys.argv[1:])."""
    args = sys.argv[1:] if argv is None else list(argv)
    # Scripts read sys.argv as Blender sets it: the program, then every argument.
    saved_argv = sys.argv
    sys.argv = [saved_argv[0] if saved_argv and saved_argv[0] else sys.executable, *args]
    try:
        return run(args)
    except Exit as exc:
        if exc.message:
            print(exc.message, file=sys.stderr)
        return exc.code
    finally:
        flush()
        sys.argv = saved_argv


if __name__ == "__main__":
    try:
        exit_code = main()  # flushed: every frame and file is written
    except BaseException:  # noqa: BLE001 - a bug of ours: say so, and still leave
        traceback.print_exc()
        flush()
        exit_code = 1
    # Leave now, as Blender does once its work is done: Python's own shutdown runs bpy's exit-time
    # destructors and waits for threads a scene's script left, and was seen to hang there (a
    # geometry-nodes scene), which would hold a render job until its walltime.
    os._exit(exit_code)
