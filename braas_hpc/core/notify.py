"""A desktop notification, where this computer has a way to show one: notify-send or gdbus (Linux and
other freedesktop systems), osascript (macOS), PowerShell (Windows). Best effort: none there, or one
that fails, is no error. Title and text never become code: they go as arguments a program reads as
data (notify-send, osascript's `on run argv`), as quoted GVariant strings (gdbus), or in environment
variables (PowerShell)."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import shutil
import sys
from collections.abc import Callable

log = logging.getLogger(__name__)
APP = "braas-hpc"
TIMEOUT_S = 10.0

_OSASCRIPT = ("on run argv", "display notification (item 2 of argv) with title (item 1 of argv)", "end run")
_POWERSHELL = """
[Windows.UI.Notifications.ToastNotificationManager, Windows.UI.Notifications, ContentType = WindowsRuntime] > $null
$xml = [Windows.UI.Notifications.ToastNotificationManager]::GetTemplateContent(
  [Windows.UI.Notifications.ToastTemplateType]::ToastText02)
$texts = $xml.GetElementsByTagName('text')
$texts.Item(0).AppendChild($xml.CreateTextNode($env:BRAAS_NOTIFY_TITLE)) > $null
$texts.Item(1).AppendChild($xml.CreateTextNode($env:BRAAS_NOTIFY_TEXT)) > $null
$app = '{1AC14E77-02E7-4E5D-B744-2EB1AE5198B7}\\WindowsPowerShell\\v1.0\\powershell.exe'
[Windows.UI.Notifications.ToastNotificationManager]::CreateToastNotifier($app).Show(
  [Windows.UI.Notifications.ToastNotification]::new($xml))
"""


def _gvariant(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def notify_argv(title: str, text: str, platform: str = sys.platform,
                which: Callable[[str], str | None] = shutil.which) -> tuple[list[str], dict[str, str]] | None:
    """The command that shows the notification here and the environment it adds; None: no way here."""
    if platform == "darwin":
        found = which("osascript")
        return ([found, *(w for line in _OSASCRIPT for w in ("-e", line)), title, text], {}) if found else None
    if platform == "win32":
        found = which("powershell") or which("pwsh")
        encoded = base64.b64encode(_POWERSHELL.encode("utf-16-le")).decode()
        return ([found, "-NoProfile", "-NonInteractive", "-EncodedCommand", encoded],
                {"BRAAS_NOTIFY_TITLE": title, "BRAAS_NOTIFY_TEXT": text}) if found else None
    if found := which("notify-send"):
        return [found, f"--app-name={APP}", "--", title, text], {}
    if found := which("gdbus"):
        return [found, "call", "--session", "--dest", "org.freedesktop.Notifications", "--object-path",
                "/org/freedesktop/Notifications", "--method", "org.freedesktop.Notifications.Notify",
                _gvariant(APP), "0", "''", _gvariant(title), _gvariant(text), "[]", "{}", "5000"], {}
    return None


async def notify(title: str, text: str) -> bool:
    """Show it if this computer can; whether it was shown. Never raises for a missing or failing tool."""
    command = notify_argv(title, text)
    if command is None:
        log.debug("no desktop notification here (no notify-send, gdbus, osascript or PowerShell)")
        return False
    argv, env = command
    try:
        process = await asyncio.create_subprocess_exec(
            *argv, env={**os.environ, **env}, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    except OSError as error:
        log.info("desktop notification not shown: %s", error)
        return False
    try:
        code = await asyncio.wait_for(process.wait(), TIMEOUT_S)
    except TimeoutError:
        process.kill()
        await process.wait()
        log.info("desktop notification not shown: %s took over %.0f s", os.path.basename(argv[0]), TIMEOUT_S)
        return False
    if code != 0:
        log.info("desktop notification not shown: %s exited with %s", os.path.basename(argv[0]), code)
    return code == 0
