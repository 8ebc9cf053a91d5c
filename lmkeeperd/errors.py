"""Every error lmkeeperd raises on purpose, and what a user can do about it.

Each error's message is written for the person reading it: it names the key,
the model, the URL or the environment variable involved, never a secret.

    LmkeeperError
    ├── ConfigError                 a config file or value is wrong (names key, line)
    ├── ServerError                 talking to LM Studio failed
    │   ├── ServerUnreachable       connection refused / timed out (names the URL)
    │   ├── AuthError               401/403: token missing or wrong (names the env var)
    │   ├── ModelNotFound           the server has no such model or instance (names it)
    │   ├── ServerTooOld            /api/v1 missing but /api/v0 present: LM Studio < 0.4
    │   ├── BadResponse             the body is not JSON or not the documented shape
    │   └── ServerRefused           any other non-2xx, with the server's own message
    ├── ProtocolError               a control-socket frame is malformed (names the field)
    │   └── FrameError              ...so badly that the connection is closed (control.protocol)
    ├── DaemonError                 the daemon cannot start or cannot be reached
    │   ├── DaemonNotRunning        no daemon answers on the socket (CLI exit code 3)
    │   └── SocketInUse             another live daemon already owns the socket
    ├── GGUFError                   a model file's header cannot be read (memory.gguf)
    └── ServiceError                installing/querying the service failed (CLI exit 1)
        ├── UnsupportedPlatform     no systemd/launchd support here (exit 2)
        ├── WrongUser               needs root, or must not run as root (exit 2)
        ├── NotInstalledByUs        the service file was not written by us
        ├── ServiceManagerUnavailable  systemctl/launchctl missing or unreachable
        └── ServiceCommandFailed    a systemctl/launchctl command failed (names it)

The errors of a part that only that part raises live beside it (marked with
their module above); everything else lives here.
"""

from __future__ import annotations

from collections.abc import Sequence


class LmkeeperError(Exception):
    """Base of every error lmkeeperd raises deliberately."""


class ConfigError(LmkeeperError):
    """One or more problems in a config file; `problems` lists each with its key."""

    def __init__(self, problems: list[str], path: str | None = None) -> None:
        self.problems = list(problems)
        self.path = path
        where = f"{path}: " if path else ""
        super().__init__(where + "; ".join(self.problems))


class ServerError(LmkeeperError):
    """Talking to the LM Studio server failed."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        self.status_code = status_code
        super().__init__(message)


class ServerUnreachable(ServerError):
    """The server did not answer (not running, wrong URL, or timed out)."""


class AuthError(ServerError):
    """The server refused our token (401/403), or wants one we do not have."""


class ModelNotFound(ServerError):
    """The server has no model (or instance) by that key/id."""


class ServerTooOld(ServerError):
    """The server speaks only the v0 API: LM Studio older than 0.4."""


class BadResponse(ServerError):
    """The server's answer is not JSON or not in the documented shape."""


class ServerRefused(ServerError):
    """Any other non-2xx answer; carries the server's own message."""


class ProtocolError(LmkeeperError):
    """A control-socket frame is malformed; the message names what was wrong."""


class DaemonError(LmkeeperError):
    """The daemon cannot start, or cannot be reached."""


class DaemonNotRunning(DaemonError):
    """No daemon answers on the control socket."""


class SocketInUse(DaemonError):
    """Another live daemon already listens on the control socket."""


class ServiceError(LmkeeperError):
    """Installing, removing or querying the service failed; `exit_code` is the CLI's."""

    exit_code = 1


class UnsupportedPlatform(ServiceError):
    """No service manager lmkeeperd knows how to use on this platform."""

    exit_code = 2


class WrongUser(ServiceError):
    """The command needs root (system unit) or must not run as root (user unit)."""

    exit_code = 2


class NotInstalledByUs(ServiceError):
    """A service file exists that `service install` did not write."""


class ServiceManagerUnavailable(ServiceError):
    """systemctl/launchctl is missing, or its manager cannot be reached."""


class ServiceCommandFailed(ServiceError):
    """A systemctl/launchctl command exited non-zero; `output` is what it said."""

    def __init__(
        self, argv: Sequence[str], returncode: int, output: str = "", hint: str = ""
    ) -> None:
        import shlex  # here: every CLI call imports this module, few raise this error

        self.argv = tuple(argv)
        self.returncode = returncode
        message = f"`{shlex.join(argv)}` failed (exit {returncode})"
        if output.strip():
            message += f": {output.strip()}"
        if hint:
            message += f"\n{hint}"
        super().__init__(message)
