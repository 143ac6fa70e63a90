"""The braas_hpc_interactive add-on in real Blender (the bpy wheel, background mode): registration and a
clean unregister, the remote viewport engine, the sidebar's draw code against the real UI API, the
operators' errors without a session, and the viewport link and tunnel closed by `links.close_all`.

There is no window or GPU context in the bpy wheel: view_draw and the texture upload cannot run here.
The view request and pixel conversion they use are exercised with stand-ins for the 3D view; the link's
frames come from a local server speaking the BlenderPhi protocol through a real tunnel."""

from __future__ import annotations

from pathlib import Path

from tests.blender.addon_runner import Session
from tests.blender.test_addon_draw import RECORDER

ENABLE = """
import threading
threads_before = set(threading.enumerate())
addon_utils.enable("braas_hpc_interactive", default_set=True)
assert "braas_hpc_interactive" in bpy.context.preferences.addons, "the interactive add-on did not enable"
from braas_hpc_interactive.blender import addon, engine, links, sessions_list
runtime = addon.runtime

def engine_selectable():
    render = bpy.context.scene.render
    before = render.engine
    try:
        render.engine = "BRAAS_HPC_REMOTE"
    except TypeError:  # not an engine Blender knows (any more)
        return []
    render.engine = before
    return ["BRAAS_HPC_REMOTE"]

def leftovers():
    from braas_hpc_interactive.blender.addon import runtime as rt
    return {
        "types": [n for n in dir(bpy.types) if n.startswith("BRAAS_HPC_INTERACTIVE")],
        "engines": engine_selectable() + (["registered"] if engine.BRAAS_HPC_RemoteEngine.is_registered else []),
        "scene_prop": hasattr(bpy.types.Scene, "braas_hpc_interactive"),
        "wm_prop": hasattr(bpy.types.WindowManager, "braas_hpc_interactive"),
        "timer": bpy.app.timers.is_registered(rt.timer),
        "handlers": [h.__name__ for h in bpy.app.handlers.load_post if "braas_hpc_interactive" in h.__module__],
        "threads": sorted(t.name for t in set(threading.enumerate()) - threads_before
                          if t.is_alive() and not t.name.startswith("fake-")),
    }
"""


def test_register_and_unregister_leave_nothing(tmp_path: Path) -> None:
    got = Session(tmp_path).run(prelude=ENABLE, script="""
        from braas_hpc_interactive.core.records import SessionRecord, save_record
        result["ops"] = sorted(dir(bpy.ops.braas_hpc_interactive))
        result["while"] = leftovers()
        result["engine_listed"] = engine.BRAAS_HPC_RemoteEngine.is_registered
        # Without a session every session operator says so (a RuntimeError for scripts).
        errors = {}
        for name in ("stop_session", "run", "stop_command", "open_tunnel", "view", "wait_session", "close_tunnel",
                     "show_bounds"):
            try:
                getattr(bpy.ops.braas_hpc_interactive, name)()
                errors[name] = "no error"
            except RuntimeError as error:
                errors[name] = str(error)
        result["errors"] = errors
        try:  # an unsaved scene cannot be packed and uploaded for the session
            bpy.ops.braas_hpc_interactive.start_session()
        except RuntimeError as error:
            result["unsaved_error"] = str(error)
        bpy.context.scene.braas_hpc_interactive.blendfile = "/cluster/scene.blend"
        try:
            bpy.ops.braas_hpc_interactive.start_session()  # the only presets here: none can hold a node
        except RuntimeError as error:
            result["start_error"] = str(error)
        # F12 with the remote engine: a clear refusal, not an empty image.
        bpy.context.scene.render.engine = "BRAAS_HPC_REMOTE"
        try:
            bpy.ops.render.render()
            result["f12"] = "rendered"
        except RuntimeError as error:
            result["f12"] = str(error)
        bpy.context.scene.render.engine = "CYCLES"
        # Alone (BRaaS-HPC disabled), no popup can ask for a passphrase: the error says what would.
        from braas_hpc.core.errors import AuthenticationFailed
        refused = AuthenticationFailed("karolina.it4i.cz refused the key")
        result["auth_with_main"] = runtime.describe(refused)
        from braas_hpc.core.transport import NoPrompts, pool
        with_popups, pool.prompts = pool.prompts, NoPrompts()  # what disabling BRaaS-HPC leaves (test_extension)
        result["auth_alone"] = runtime.describe(refused)
        pool.prompts = with_popups
        # A session recorded on this computer is listed after a restart of the add-on.
        save_record(SessionRecord(name="i-20260101-120000-ab12", preset="karolina", scheduler="slurm", job_id="77",
                                  root="/scratch/p/braas-hpc", walltime_min=30, gpu=True, created=1.0))
        # BlenderPhi (no authentication) only after the popup's yes: Run from a script without it is refused
        # before anything reaches the cluster.
        bpy.context.scene.braas_hpc_interactive.kind = "BLENDERPHI"
        try:
            bpy.ops.braas_hpc_interactive.run(session="i-20260101-120000-ab12")
            result["blenderphi_unconfirmed"] = "no error"
        except RuntimeError as error:
            result["blenderphi_unconfirmed"] = str(error)
        bpy.context.scene.braas_hpc_interactive.kind = "BUILTIN"
        addon_utils.disable("braas_hpc_interactive", default_set=True)
        addon_utils.enable("braas_hpc_interactive", default_set=True)
        props = bpy.context.window_manager.braas_hpc_interactive
        result["listed"] = [(s.name, s.preset, s.job_id, s.gpu) for s in props.sessions]
        result["selected"] = sessions_list.selected_name()
        addon_utils.disable("braas_hpc_interactive", default_set=True)
        result["after"] = leftovers()
    """)
    for op in ("start_session", "stop_session", "refresh_sessions", "run", "stop_command", "open_tunnel",
               "close_tunnel", "view", "stop_viewing", "abort"):
        assert op in got["ops"]
    during = got["while"]
    assert during["engines"] == ["BRAAS_HPC_REMOTE", "registered"] and during["scene_prop"] and during["timer"]
    assert "braas-hpc-loop" in during["threads"] and got["engine_listed"]
    for name, error in got["errors"].items():
        expected = {"close_tunnel": "no tunnel open", "show_bounds": "no frame from a render server yet"}.get(
            name, "no interactive session selected")
        assert expected in error, (name, error)
    assert "preset" in got["start_error"] or "Slurm or PBS" in got["start_error"]
    assert "save the scene first" in got["unsaved_error"]
    assert "only shows a remote viewport" in got["f12"]
    assert got["auth_with_main"] == "karolina.it4i.cz refused the key"  # its popups would have asked
    assert got["auth_alone"] == ("karolina.it4i.cz refused the key (a login that asks for a passphrase or a code "
                                 "needs the BRaaS-HPC add-on enabled)")
    assert "no authentication" in got["blenderphi_unconfirmed"] and "every user and job on that node" in \
        got["blenderphi_unconfirmed"] and "confirm the popup of Run" in got["blenderphi_unconfirmed"]
    assert got["listed"] == [["i-20260101-120000-ab12", "karolina", "77", True]]
    assert got["selected"] == "i-20260101-120000-ab12"
    assert got["after"] == {"types": [], "engines": [], "scene_prop": False, "wm_prop": False, "timer": False,
                            "handlers": [], "threads": []}


def test_each_add_on_has_its_own_loop_and_outlives_the_other(tmp_path: Path) -> None:
    """Both add-ons enabled in one Blender run on one copy of the toolkit but each on its own loop thread:
    disabling BRaaS-HPC stops its loop and takes its login popups away, while the interactive add-on's work
    (a tunnel lives for hours) goes on and its Abort still works."""
    got = Session(tmp_path).run(prelude=ENABLE, script="""
        import asyncio
        from braas_hpc.blender.addon import runtime as main
        from braas_hpc.core.transport import pool
        loops = lambda: sum(1 for t in threading.enumerate() if t.name == "braas-hpc-loop" and t.is_alive())
        result["loops_both"] = loops()
        result["distinct"] = main.state.bridge is not runtime.state.bridge
        result["prompts_main"] = pool.prompts is main.state.broker and runtime.state.broker is None
        gate = threading.Event()

        async def hold():
            while not gate.is_set():
                await asyncio.sleep(0.01)
            return "still here"

        holding = runtime.state.bridge.run("Holding a tunnel", hold, kind="tunnel")
        addon_utils.disable("braas_hpc", default_set=True)
        result["loops_after"] = loops()
        result["main_running"] = main.state.bridge.running
        result["prompts_after"] = type(pool.prompts).__name__
        result["holding_untouched"] = not holding.finished
        gate.set()
        result["held"] = holding.result(10)
        waiting = runtime.state.bridge.run("Waiting", lambda: asyncio.sleep(30), kind="start")
        result["abort"] = sorted(bpy.ops.braas_hpc_interactive.abort())
        result["aborted"] = runtime.wait_until(lambda: waiting.finished, 10) and waiting.cancelled
        result["message"] = runtime.state.message.text
    """)
    assert got["loops_both"] == 2 and got["distinct"] and got["prompts_main"]
    assert got["loops_after"] == 1 and not got["main_running"] and got["prompts_after"] == "NoPrompts"
    assert got["holding_untouched"] and got["held"] == "still here"
    assert got["abort"] == ["FINISHED"] and got["aborted"] and got["message"] == "stopped 1 operation(s)"


ICONS_CHECKED = """
ICONS = set(bpy.types.UILayout.bl_rna.functions["label"].parameters["icon"].enum_items.keys())
_unchecked = Layout.__getattr__
def _icon_checked(self, name):
    call = _unchecked(self, name)
    def checked(*args, **kwargs):
        assert kwargs.get("icon", "NONE") in ICONS, f"Blender has no icon {kwargs['icon']}"
        return call(*args, **kwargs)
    return checked
Layout.__getattr__ = _icon_checked
"""


def test_every_panel_draws_with_the_real_ui_api(tmp_path: Path) -> None:
    got = Session(tmp_path).run(prelude=RECORDER + ICONS_CHECKED + ENABLE, script="""
        import types
        from braas_hpc_interactive.blender import ui
        from braas_hpc_interactive.core.records import SessionRecord, save_record
        panels = (ui.BRAAS_HPC_INTERACTIVE_PT_main, ui.BRAAS_HPC_INTERACTIVE_PT_session,
                  ui.BRAAS_HPC_INTERACTIVE_PT_command, ui.BRAAS_HPC_INTERACTIVE_PT_viewport)
        context = bpy.context
        for cls in panels:
            cls.draw(panel(cls), context)  # nothing yet
        save_record(SessionRecord(name="i-20260101-120000-ab12", preset="lumi", scheduler="slurm", job_id="5",
                                  root="/scratch/p/braas-hpc", walltime_min=30, gpu=False, created=1.0))
        sessions_list.load_records()
        item = context.window_manager.braas_hpc_interactive.sessions[0]
        item.job_state, item.node, item.command, item.port = "RUNNING", "nid001", "running", 40123
        runtime.tell("a long message about what happened " * 6, "ERROR")
        links.output.append("Blender 4.5.4")
        links.output.append("braas-render-server: listening on 10.0.0.7:40123")
        links.add_tunnel(item.name, links.TunnelEntry(types.SimpleNamespace(), 50000, "nid001", 40123, "ab" * 24))
        addon.copy_for_panel()
        for kind in ("COMMAND", "BLENDERPHI", "BUILTIN"):
            context.scene.braas_hpc_interactive.kind = kind
            for cls in panels:
                cls.draw(panel(cls), context)
        operation = links.loop.run("Waiting for a node", lambda: __import__("asyncio").sleep(5), kind="start")
        links.open_view("127.0.0.1", 9, None, key=item.name)  # nothing listens: the status shows the error
        addon.copy_for_panel()
        for cls in panels:
            cls.draw(panel(cls), context)
        ui.BRAAS_HPC_INTERACTIVE_UL_sessions.draw_item(None, context, Layout(), None, item, 0, None, "", 0)
        operation.cancel()
        links.close_view()
        with links._state.lock:
            links._state.tunnels.clear()  # a stand-in, not a tunnel to close
        result["calls"] = sorted(set(Layout.calls))
        result["count"] = len(Layout.calls)
        # A replaced link's late frame is not taken for the new link's.
        class QuietLink:
            def __init__(self, host, port, token, on_frame, **options):
                self.on_frame, self.stopped, self.max_samples = on_frame, False, options["max_samples"]
            def start(self): pass
            def stop(self, timeout=0): self.stopped = True
        old_link = links.open_view("127.0.0.1", 1, None, link_factory=QuietLink)
        new_link = links.open_view("127.0.0.1", 2, "cd" * 24, link_factory=QuietLink)
        old_link.on_frame(types.SimpleNamespace(width=1, height=1))
        result["stale_frame"] = links.latest()[1] is not None
        new_link.on_frame(types.SimpleNamespace(width=2, height=2))
        result["new_frame"] = links.latest()[1].width
        context.scene.braas_hpc_interactive.max_samples = 64  # the open link follows the panel
        result["limit"] = new_link.max_samples
        links.close_all()
        result["quiet_links_stopped"] = [old_link.stopped, new_link.stopped]
        # No token in any property of the scene or the window manager.
        result["props"] = [str(getattr(group, p.identifier, "")) for group in
                           (context.scene.braas_hpc_interactive, item) for p in group.bl_rna.properties]
    """)
    for call in ("prop", "operator", "template_list", "label", "box"):
        assert call in got["calls"]
    assert got["count"] > 50
    assert not any("ab" * 24 in value for value in got["props"])
    assert got["stale_frame"] is False and got["new_frame"] == 2 and got["quiet_links_stopped"] == [True, True]
    assert got["limit"] == 64


LOCAL_SERVER = '''
import socket, struct, threading
from braas_hpc_interactive.core.protocol import (STATE_SIZE, VIEW_SIZE, ServerState, ViewRequest, recv_acked,
                                                 send_acked)

class FakeServer:
    """A render server speaking the BlenderPhi protocol: every pixel (0.5, 0.25, 1, 1), samples counting up."""
    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.views, self.scripts, self.goodbye, self.closed = [], [], False, threading.Event()
        threading.Thread(target=self.serve, name="fake-render-server", daemon=True).start()
    def serve(self):
        conn, _ = self.listener.accept()
        samples = 0
        try:
            while True:
                view = ViewRequest.unpack(recv_acked(conn, VIEW_SIZE))
                if view.reset:
                    self.goodbye = True
                    break
                self.views.append(view)
                (length,) = struct.unpack("<i", recv_acked(conn, 4))
                if length:
                    self.scripts.append(recv_acked(conn, length))
                samples += 1
                pixel = struct.pack("<4e", 0.5, 0.25, 1.0, 1.0)
                send_acked(conn, pixel * (view.width * view.height))
                send_acked(conn, ServerState((-1.0, 2.0, 0.0), (3.0, 6.0, 0.5), samples=samples, fps=30.0).pack())
        except Exception:
            pass
        finally:
            conn.close()
            self.listener.close()
            self.closed.set()
'''


def test_viewing_through_a_tunnel_and_close_all(tmp_path: Path) -> None:
    got = Session(tmp_path).run(prelude=LOCAL_SERVER + ENABLE, script="""
        import math, socket, types
        from mathutils import Matrix
        from braas_hpc.core.transport.local import LocalTransport
        from braas_hpc_interactive.core.tunnel import Tunnel, socket_path
        server = FakeServer()
        scene = bpy.context.scene
        scene.render.engine = "BLENDER_WORKBENCH"
        # A real tunnel on the add-on's loop, to the local server, from a private Unix socket.
        path = socket_path("i-20260101-120000-ab12")
        tunnel = Tunnel(lambda: LocalTransport(), "127.0.0.1", server.port, check_s=0.2, local_path=path)
        local_port = links.loop.run("open", tunnel.open).result(10)
        entry = links.TunnelEntry(tunnel, local_port, "127.0.0.1", server.port, "ab" * 24, path)
        links.add_tunnel("i-20260101-120000-ab12", entry)
        result["entry"] = [list(entry.address), entry.local_end, local_port]
        engine.start_viewing(scene, *entry.address, None, "i-20260101-120000-ab12", 0)
        result["engine_while"] = scene.render.engine
        # What view_draw sends for a 200x100 perspective view (a stand-in 3D view: no window here).
        region = types.SimpleNamespace(width=200, height=100)
        rv3d = types.SimpleNamespace(view_matrix=Matrix.Translation((1, 2, 3)), view_perspective="PERSP",
                                     view_distance=10.0, view_camera_zoom=0.0, view_camera_offset=(0.0, 0.0))
        space = types.SimpleNamespace(lens=50.0, clip_start=0.1, clip_end=100.0)
        view = engine.viewport_request(region, rv3d, space, scene)
        result["view"] = [view.width, view.height, list(view.matrix), view.lens, view.orthographic]
        result["sent"] = [links.set_view(view, owner=1), links.set_view(view, owner=1),
                          links.set_view(view.with_frame(9), owner=1)]
        other = engine.viewport_request(types.SimpleNamespace(width=50, height=50), rv3d, space, scene)
        result["other_region_sent"] = links.set_view(other, owner=2)  # a second rendered view does not steer
        # Camera view follows the scene camera (an orthographic one: the reference add-on crashed there).
        bpy.ops.object.camera_add()
        scene.camera = bpy.context.active_object
        scene.camera.data.type, scene.camera.data.ortho_scale = "ORTHO", 4.0
        rv3d.view_perspective = "CAMERA"
        camera_view = engine.viewport_request(region, rv3d, space, scene)
        result["camera_view"] = [camera_view.orthographic, camera_view.lens, camera_view.use_view_camera]
        scene.camera.data.type = "PANO"
        try:
            engine.viewport_request(region, rv3d, space, scene)
        except ValueError as error:
            result["pano"] = str(error)
        # Frames arrive on the link's thread; the main thread's timer notices each new one.
        runtime.wait_until(lambda: links.latest()[1] is not None and links.latest()[1].state.samples >= 3, 20)
        serial, frame = links.latest()
        floats = engine.frame_floats(frame)
        result["frame"] = [frame.width, frame.height, frame.state.samples, [float(x) for x in floats[:4]],
                           int(floats.size)]
        result["stats"] = engine.stats_text(links.current(), frame)
        # BlenderPhi's script: the text block goes to the server once per change, as view_draw hands it over.
        result["no_script"] = engine.script_of(scene)
        block = bpy.data.texts.new("material.xml")
        block.write("<shader name='red'/>")
        scene.braas_hpc_interactive.script_text = block
        result["script_sent"] = [links.set_script(engine.script_of(scene)), links.set_script(engine.script_of(scene))]
        links.drawn()  # as view_draw does next: a link paused for want of draws resumes
        from braas_hpc_interactive.core import live
        result["live"] = live.read("i-20260101-120000-ab12")  # what `braas-hpc dashboard` shows
        # The server's scene bounds as a box in the open file.
        result["bounds_op"] = sorted(bpy.ops.braas_hpc_interactive.show_bounds())
        box = bpy.data.objects["BRaaS-HPC Remote Bounds"]
        result["bounds"] = [list(box.location), list(box.scale), box.empty_display_type,
                            box.name in scene.collection.objects]
        runtime.wait_until(lambda: server.scripts, 10)
        result["server_scripts"] = [bytes(x).decode() for x in server.scripts]
        runtime.pump()
        result["drawn_serial_seen"] = addon.panel.drawn_serial == links.serial()
        # No window here, so no view_draw: once a frame has gone undrawn for IDLE_AFTER_S the link pauses.
        result["paused"] = runtime.wait_until(lambda: links.current().paused, links.IDLE_AFTER_S + 10)
        result["paused_status"] = links.describe_link(links.current())
        links.drawn()  # what view_draw calls: the viewport shows it again
        result["resumed"] = not links.current().paused
        link = links.current()
        # The add-on going away closes the link (goodbye sent) and the tunnel (its port refuses).
        addon_utils.disable("braas_hpc_interactive", default_set=True)
        result["link_thread_alive"] = link._thread.is_alive()
        result["goodbye"] = server.closed.wait(5) and server.goodbye
        result["tunnel_port_open"] = __import__("os").path.exists(path)  # closed: its socket removed
        result["engine_after"] = scene.render.engine
        result["tunnels_left"] = len(links.tunnels())
        result["live_after"] = live.read("i-20260101-120000-ab12")
        result["after"] = leftovers()
    """)
    assert got["engine_while"] == "BRAAS_HPC_REMOTE"
    (path, port), local_end, local_port = got["entry"]
    assert path.endswith(".sock") and port == 0 and local_end == "private socket" and local_port == 0
    width, height, matrix, lens, ortho = got["view"]
    assert (width, height, ortho) == (200, 100, False)
    assert matrix[3] == -1.0 and matrix[7] == -2.0 and matrix[11] == -3.0  # the inverse of the view matrix
    assert abs(lens - 2 * __import__("math").atan(0.5 * 72 / 50 / 2)) < 1e-6
    assert got["sent"] == [True, False, False]  # unchanged and frame-only changes are not sent
    assert got["other_region_sent"] is False
    assert got["camera_view"][0] is True and abs(got["camera_view"][1] - 4.0) < 1e-6 and got["camera_view"][2]
    assert "PANO" in got["pano"]
    assert got["frame"][:2] == [200, 100] and got["frame"][2] >= 3
    assert got["frame"][3] == [0.5, 0.25, 1.0, 1.0] and got["frame"][4] == 200 * 100 * 4
    assert got["stats"].startswith("Samples ") and "(remote 30.0)" in got["stats"]
    assert got["no_script"] is None and got["script_sent"] == [True, False]
    assert got["server_scripts"] == ["<shader name='red'/>"]
    assert got["bounds_op"] == ["FINISHED"]
    assert got["bounds"] == [[1.0, 4.0, 0.25], [2.0, 2.0, 0.25], "CUBE", True]
    assert got["drawn_serial_seen"]
    assert got["live"]["tunnel"] == "private socket" and got["live"]["fps"] > 0
    assert got["live_after"].get("tunnel") is None
    assert got["paused"] is True and got["paused_status"].startswith("paused: no 3D view") and got["resumed"]
    assert got["link_thread_alive"] is False and got["goodbye"] is True
    assert got["tunnel_port_open"] is False and got["tunnels_left"] == 0
    assert got["engine_after"] == "BLENDER_WORKBENCH"
    assert got["after"]["threads"] == [] and not got["after"]["timer"] and got["after"]["types"] == []
