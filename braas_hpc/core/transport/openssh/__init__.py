"""The system OpenSSH back end: the user's own `ssh`, with one master connection reused by every call.

`connect()` starts a ControlMaster in the background (`ssh -f -N`); commands, streams, transfers and
forwards then travel over it as multiplexed sessions, so a passphrase or one-time code is asked
once per connection. On Windows (no unix sockets for ControlPath) every call is its own connection,
without prompts.

The parts carry the same names as the paramiko back end's, one role each:
- transport.py: the Transport class, put together from the parts; commands, streams, listings
- client.py: the state every part shares and the ssh calls they make through the master
- connect.py: connect() and close() (the master, or a probe without multiplexing)
- auth.py: passphrases and one-time codes (SSH_ASKPASS, served back to the user's Prompts)
- copy.py: file copies (a remote dd/cat fed or drained by a local thread)
- forward.py: port forwards
- diagnose.py: ssh's failures as typed errors, refused host keys explained
and OpenSSH's own: options.py (the ssh command line, ProxyJump by hand), process.py (local processes),
shell.py (a long-lived remote shell for short commands), askpass.py (the helper program ssh runs).
The shared-name parts that need the connection's state are classes on top of client.Client, and
transport.py joins them: OpenSSHTransport(Copies, Forwards), both on Connecting, which is on Diagnosing
and Asking. A part imports only the parts below it.
"""

from .options import proxy_command, split_jump, ssh_options
from .transport import OpenSSHTransport

__all__ = ["OpenSSHTransport", "proxy_command", "split_jump", "ssh_options"]
