"""The paramiko back end: one paramiko Transport per hop, commands on channels, files over scp and SFTP.

paramiko blocks, so every call into it runs on a worker thread and the event loop only awaits.

The parts carry the same names as the OpenSSH back end's, one role each:
- transport.py: the Transport class, put together from the parts; commands, streams, listings
- client.py: the state every part shares (the chain of hops, idle SFTP sessions, open streams)
- connect.py: connect() and close() (a Transport per hop, the host key checked before any credential)
- auth.py: key files, passphrases, the agent, keyboard-interactive
- copy.py: file copies (scp for whole files, SFTP for resumed ones)
- forward.py: port forwards
- diagnose.py: paramiko's failures as typed errors
and paramiko's own: threads.py (blocking calls on threads of their own), channels.py (a command's
output, exit status and input on a channel). The shared-name parts that need the connection's state
are classes on top of client.Client, and transport.py joins them: ParamikoTransport(Copies, Forwards),
both on Connecting, which is on Diagnosing and Authenticating. A part imports only the parts below it.
"""

from .forward import ParamikoForward
from .transport import ParamikoTransport

__all__ = ["ParamikoForward", "ParamikoTransport"]
