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
    │   ├── ServerRefused           any other non-2xx, with the server's own message
    │   └── ChannelError            LM Studio's websocket channel (lmstudio.channel)
    │       ├── ChannelMissing      the upgrade was answered as an unknown endpoint
    │       ├── RpcMissing          the server does not know that RPC (LM Studio < 0.3.27)
    │       ├── RpcFailed           the server answered the call with an rpcError
    │       └── RpcTimeout          no answer within the call's timeout
    ├── ProtocolError               a control-socket frame is malformed (names the field)
    │   └── FrameError              ...so badly that the connection is closed (control.protocol)
    ├── DaemonError                 the daemon cannot start or cannot be reached
    │   ├── DaemonNotRunning        no daemon answers on the socket (CLI exit code 3)
    │   └── SocketInUse             another live daemon already owns the socket
    ├── GGUFError                   a model file's header cannot be read (memory.gguf)
    └── ServiceError                installing/querying the service failed (service.manage)
        └── UnsupportedPlatform, WrongUser, NotInstalledByUs,
            ServiceManagerUnavailable, ServiceCommandFailed

The errors of a part that only that part raises live beside it (marked with
their module above); everything else lives here.
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


class RpcTimeout(ChannelError):
    """No answer within the call's timeout."""


class ProtocolError(LmkeeperError):
    """A control-socket frame is malformed; the message names what was wrong."""


class DaemonError(LmkeeperError):
    """The daemon cannot start, or cannot be reached."""


class DaemonNotRunning(DaemonError):
    """No daemon answers on the control socket."""


class SocketInUse(DaemonError):
    """Another live daemon already listens on the control socket."""
