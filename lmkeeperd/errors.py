"""Every error lmkeeperd raises on purpose, and what a user can do about it.

Each error's message is written for the person reading it: it names the key,
the model, the URL or the environment variable involved, never a secret.

    LmkeeperError
    ├── ConfigError                 a config file or value is wrong (names key, line)
    │   └── ConfigEmpty             the file is empty (mid-edit, or never written)
    ├── ServerError                 talking to LM Studio failed
    │   ├── ServerUnreachable       connection refused / timed out (names the URL)
    │   │   └── LoadTimedOut        a load outlasted load_timeout: it may still land
    │   ├── AuthError               401/403: token missing or wrong (names the env var)
    │   ├── ModelNotFound           the server has no such model or instance (names it)
    │   ├── ServerTooOld            /api/v1 missing but /api/v0 present: LM Studio < 0.4
    │   ├── BadResponse             the body is not JSON or not the documented shape
    │   ├── ServerRefused           any other non-2xx, with the server's own message
    │   │   └── LoadRefused         the load guardrail said the model will not fit (L27)
    │   └── ChannelError            LM Studio's websocket channel (lmstudio.channel)
    │       ├── ChannelMissing      the upgrade was answered as an unknown endpoint
    │       ├── RpcMissing          the server does not know that RPC (LM Studio < 0.3.27)
    │       ├── RpcFailed           the server answered the call with an rpcError
    │       │   └── InstanceNotLoaded   ...saying no loaded instance matches ("not loaded")
    │       └── RpcTimeout          no answer within the call's timeout
    ├── ProtocolError               a control-socket frame is malformed (names the field)
    │   └── FrameError              ...so badly that the connection is closed
    ├── DaemonError                 the daemon cannot start or cannot be reached
    │   ├── DaemonNotRunning        no daemon answers on the socket (CLI exit code 3)
    │   └── SocketInUse             another live daemon already owns the socket
    ├── SelectionError              the proxy could not switch to a request's model (503/504)
    ├── LifecycleError              an event the core cannot accept in its state (a driver bug)
    ├── GGUFError                   a model file's header cannot be read
    ├── UnsafeFileError             a file we read is a FIFO, device, folder or too big (fileio)
    └── ServiceError                installing/querying the service failed (CLI exit 1)
        ├── UnsupportedPlatform     no systemd/launchd support here (exit 2)
        ├── WrongUser               needs root, or must not run as root (exit 2)
        ├── NotInstalledByUs        the service file was not written by us
        ├── ServiceManagerUnavailable  systemctl/launchctl missing or unreachable
        └── ServiceCommandFailed    a systemctl/launchctl command failed (names it)

The errors of a part that only that part raises live beside it (marked with
their module above); everything else lives here.

Some exceptions stay outside this tree on purpose: they are control flow inside one
part, always caught within that part and turned into one of the errors above or into
an answer, so no caller outside it ever sees one. `config.values.Invalid` (becomes one
line of a ConfigError), `lmstudio.client._Shape` (a BadResponse), `proxy.http1.HttpError`
and `proxy.forward._Refused`/`Broken` (an HTTP error answer, or a closed connection),
`proxy.wire.UpstreamUnreachable` (a 502 answer), `memory.kv.GeometryError` (the estimate
notes why and uses another source), and the emulator's own (a stand-in for LM Studio,
not part of lmkeeperd's behaviour).

This module imports nothing, so that every part, the pure core included, may use it.
"""

from __future__ import annotations


class LmkeeperError(Exception):
    """Base of every error lmkeeperd raises deliberately."""


class ConfigError(LmkeeperError):
    """One or more problems in a config file; `problems` lists each with its key."""

    def __init__(self, problems: list[str], path: str | None = None) -> None:
        self.problems = list(problems)
        self.path = path
        where = f"{path}: " if path else ""
        super().__init__(where + "; ".join(self.problems))


class ConfigEmpty(ConfigError):
    """The config file is empty: often an editor's save seen half-way, never "all defaults"."""

    def __init__(self, path: str | None = None) -> None:
        super().__init__(["the file is empty"], path=path)


class ServerError(LmkeeperError):
    """Talking to the LM Studio server failed."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        self.status_code = status_code
        super().__init__(message)


class ServerUnreachable(ServerError):
    """The server did not answer (not running, wrong URL, or timed out)."""


class LoadTimedOut(ServerUnreachable):
    """A load request outlasted `load_timeout`: the server may still finish it (L22)."""


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


class LoadRefused(ServerRefused):
    """LM Studio refused a load for lack of resources (its "model loading guardrails",
    lmstudio-real.md); `model` is the key, `server_message` LM Studio's own words."""

    def __init__(
        self, message: str, *, model: str, server_message: str, status_code: int | None = None
    ) -> None:
        self.model = model
        self.server_message = server_message
        super().__init__(message, status_code=status_code)


class ChannelError(ServerError):
    """LM Studio's websocket channel failed (refused auth: AuthError; drops: ServerUnreachable)."""


class ChannelMissing(ChannelError):
    """The server has no websocket channel there: it answered the upgrade like any unknown GET."""


class RpcMissing(ChannelError):
    """The server does not know the endpoint called (a communicationWarning, never an answer)."""


class RpcFailed(ChannelError):
    """The server answered with an rpcError; `title` and `code` are its own."""

    def __init__(self, message: str, *, title: str, code: str | None) -> None:
        self.title = title
        self.code = code
        super().__init__(message)


class InstanceNotLoaded(RpcFailed):
    """The rpcError says no loaded instance matches the specifier (`code` names which:
    `generic.noModelMatchingQuery` or `generic.specificModelUnloaded`): "not loaded"."""


class RpcTimeout(ChannelError):
    """No answer within the call's timeout."""


class ProtocolError(LmkeeperError):
    """A control-socket frame is malformed; the message names what was wrong."""


class FrameError(ProtocolError):
    """The frame itself is unusable; the server replies with this and closes the connection."""


class SelectionError(LmkeeperError):
    """The model a request named could not be made the loaded one.

    `status` is the HTTP status the client gets: 503 when the load failed or
    another selection took over, 504 when it did not finish in time.
    """

    def __init__(self, message: str, *, status: int = 503) -> None:
        super().__init__(message)
        self.status = status


class LifecycleError(LmkeeperError):
    """An event that cannot be legal in the core's state (a driver bug).

    The core raises it and changes nothing; the driver logs it and keeps running.
    """


class GGUFError(LmkeeperError):
    """A file is not a GGUF we can read: wrong magic, truncated, garbage, too old."""


class DaemonError(LmkeeperError):
    """The daemon cannot start, or cannot be reached."""


class DaemonNotRunning(DaemonError):
    """No daemon answers on the control socket."""


class SocketInUse(DaemonError):
    """Another live daemon already listens on the control socket."""


class UnsafeFileError(LmkeeperError):
    """A file lmkeeperd reads is not a regular file, or is larger than it may be."""


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
    """systemctl/launchctl is missing, or its manager cannot be reached; `reason` is the
    short why (`service status` shows `unknown (reason)`), the message the whole story."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason or message


class ServiceCommandFailed(ServiceError):
    """A systemctl/launchctl command exited non-zero; `output` is what it said."""

    def __init__(self, command: str, returncode: int, output: str = "", hint: str = "") -> None:
        # `command` comes already quoted (shlex.join): this module imports nothing.
        self.command = command
        self.returncode = returncode
        message = f"`{command}` failed (exit {returncode})"
        if output.strip():
            message += f": {output.strip()}"
        if hint:
            message += f"\n{hint}"
        super().__init__(message)
