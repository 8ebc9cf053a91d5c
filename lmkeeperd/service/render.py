"""Service definitions as text: systemd units and the launchd plist.

Everything here is a pure function of its arguments (the unit templates are
read from the package, never written). `manage` decides where the text goes.

The systemd units are templates shipped in `templates/`, with placeholders
`@EXEC@`, `@CONFIG@`, `@ENV_FILE@` and `@USER@` that are filled with values
quoted for systemd's own syntax. The LaunchAgent plist is a template there
too, whose placeholders `@PROGRAM_ARGUMENTS@`, `@ENVIRONMENT@` and `@LOG@`
take XML elements and text escaped for XML. The repository's `systemd/` and
`launchd/` folders hold copies of these templates (a test keeps them equal).

Both kinds of file can carry *install records*: comment lines saying which
files and folders `lmkeeperd service install` created, so that `uninstall` can
remove exactly those and nothing a person made. A file with no records was not
written by `service install`.
"""

from __future__ import annotations

import json
import plistlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Literal, TypeAlias

Scope: TypeAlias = Literal["user", "system"]

UNIT_NAME = "lmkeeperd.service"
LAUNCHD_LABEL = "io.github.lmkeeperd"
PLIST_TEMPLATE = f"{LAUNCHD_LABEL}.plist"
TEMPLATE_NAMES: Mapping[Scope, str] = {
    "user": "lmkeeperd.service",
    "system": "lmkeeperd-system.service",
}
# Seconds launchd waits before starting the job again after it exits; launchd's
# own default, said explicitly so a crash loop stays slow (in the plist template).
LAUNCHD_THROTTLE_S = 10

_RECORD_TAG = "lmkeeperd-install:"
_RECORDS_HEADING = (
    "Written by `lmkeeperd service install`. The lines below list what it created;"
    " `lmkeeperd service uninstall` removes exactly that."
)
# Words systemd takes as they are: no quotes, escapes, specifiers (%) or
# variables ($) in them.
_PLAIN_WORD = re.compile(r"[A-Za-z0-9_@+=:,./-]+")
_USER_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\$?")
_PLACEHOLDER = re.compile(r"@[A-Z_]+@")
_JSON_DASH = "\\u002d"


@dataclass(frozen=True, slots=True)
class InstallRecord:
    """One thing `service install` created, written into the service file.

    `kind` is "marker" (the file itself was written by `service install`;
    `path` is empty), "file" (with the sha256 of what was written, so an
    edited file is kept) or "dir" (removed on uninstall only when empty).
    """

    kind: Literal["marker", "file", "dir"]
    path: str = ""
    sha256: str = ""
    version: str = ""

    def to_json(self) -> str:
        fields: dict[str, str] = {"kind": self.kind}
        for name in ("path", "sha256", "version"):
            value: str = getattr(self, name)
            if value:
                fields[name] = value
        return json.dumps(fields, sort_keys=True)


@dataclass(frozen=True, slots=True)
class UnitParams:
    """What a systemd unit needs to know about this installation."""

    exec_argv: tuple[str, ...]
    config_path: Path
    env_file: Path
    run_as: str | None = None  # system units only: the User= the daemon runs as


@dataclass(frozen=True, slots=True)
class PlistParams:
    """What the launchd agent needs to know about this installation."""

    exec_argv: tuple[str, ...]
    config_path: Path
    log_path: Path
    environment: Mapping[str, str] = field(default_factory=dict)


def load_template(scope: Scope) -> str:
    """The packaged unit template for `scope`, placeholders unfilled."""
    name = TEMPLATE_NAMES[scope]
    return resources.files(__package__).joinpath("templates", name).read_text(encoding="utf-8")


def systemd_quote(word: str, *, program: bool = False) -> str:
    """`word` as one word on a systemd Exec*= line, taken literally.

    systemd splits on whitespace, honours double quotes with C escapes, and
    expands `%` specifiers even inside quotes, so `%` is doubled. It expands
    `$VARIABLES` in the arguments but not in the program path (the first
    word), so `$` is doubled only in arguments.
    """
    _reject_control_chars(word)
    if _PLAIN_WORD.fullmatch(word):
        return word
    escaped = word.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    return '"' + (escaped if program else escaped.replace("$", "$$")) + '"'


def systemd_path(path: Path) -> str:
    """An absolute path as the value of a path setting (no quoting there)."""
    text = str(path)
    _reject_control_chars(text)
    if not path.is_absolute():
        raise ValueError(f"systemd needs an absolute path, not {text!r}")
    return text.replace("%", "%%")


def render_systemd_unit(
    scope: Scope, params: UnitParams, records: Sequence[InstallRecord] = ()
) -> str:
    """The unit file for `scope`, with `records` as comments at its top."""
    if not params.exec_argv or not Path(params.exec_argv[0]).is_absolute():
        raise ValueError(f"ExecStart= needs an absolute executable, not {params.exec_argv!r}")
    values = {
        "@EXEC@": " ".join(
            systemd_quote(word, program=index == 0) for index, word in enumerate(params.exec_argv)
        ),
        "@CONFIG@": systemd_quote(str(_absolute(params.config_path))),
        "@ENV_FILE@": systemd_path(params.env_file),
    }
    if scope == "system":
        if params.run_as is None or not _USER_NAME.fullmatch(params.run_as):
            raise ValueError(f"a system unit needs a valid user name, not {params.run_as!r}")
        values["@USER@"] = params.run_as
    text = _PLACEHOLDER.sub(lambda match: values[match.group(0)], load_template(scope))
    if not records:
        return text
    lines = [_RECORDS_HEADING, *(f"{_RECORD_TAG} {record.to_json()}" for record in records)]
    return "".join(f"# {line}\n" for line in lines) + text


def load_plist_template() -> str:
    """The packaged LaunchAgent template (launchd/ in the repository holds a copy)."""
    return resources.files(__package__).joinpath("templates", PLIST_TEMPLATE).read_text("utf-8")


def render_launchd_plist(params: PlistParams, records: Sequence[InstallRecord] = ()) -> str:
    """The LaunchAgent plist from its template, with `records` as XML comments before
    `<plist>`. The placeholders take whole elements, escaped for XML; the result is what
    plistlib would write for the same job (tests/service/test_service_render.py)."""
    if not params.exec_argv or not Path(params.exec_argv[0]).is_absolute():
        raise ValueError(f"ProgramArguments needs an absolute executable, not {params.exec_argv!r}")
    environment = {"PYTHONUNBUFFERED": "1", **params.environment}
    arguments = [*params.exec_argv, "run", "--config", str(_absolute(params.config_path))]
    values = {
        "@PROGRAM_ARGUMENTS@": "\n".join(
            f"\t\t<string>{_xml(word)}</string>" for word in arguments
        ),
        "@ENVIRONMENT@": "\n".join(
            f"\t\t<key>{_xml(key)}</key>\n\t\t<string>{_xml(environment[key])}</string>"
            for key in sorted(environment)
        ),
        "@LOG@": _xml(str(params.log_path)),
    }
    text = _PLACEHOLDER.sub(lambda match: values[match.group(0)], load_plist_template())
    # "--" may not appear inside an XML comment; JSON reads "\u002d" as "-".
    lines = [
        _RECORDS_HEADING,
        *(f"{_RECORD_TAG} {record.to_json().replace('-', _JSON_DASH)}" for record in records),
    ]
    comments = "".join(f"<!-- {line} -->\n" for line in lines) if records else ""
    head, doctype_end, rest = text.partition("<plist ")
    return head + comments + doctype_end + rest


def _xml(text: str) -> str:
    """`text` as XML character data; plistlib refuses control characters, and so do we."""
    _reject_control_chars(text)
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def parse_install_records(text: str) -> list[InstallRecord]:
    """The install records in a unit or plist; [] when it has none."""
    records = []
    for line in text.splitlines():
        _, tag, rest = line.partition(_RECORD_TAG)
        if not tag:
            continue
        body = rest.strip().removesuffix("-->").strip()
        try:
            fields = json.loads(body)
        except json.JSONDecodeError:
            continue
        if not isinstance(fields, dict) or fields.get("kind") not in ("marker", "file", "dir"):
            continue
        records.append(
            InstallRecord(
                kind=fields["kind"],
                path=str(fields.get("path", "")),
                sha256=str(fields.get("sha256", "")),
                version=str(fields.get("version", "")),
            )
        )
    return records


def environment_of_plist(text: str) -> dict[str, str]:
    """The EnvironmentVariables of an existing plist (to keep a user's additions)."""
    try:
        job = plistlib.loads(text.encode("utf-8"))
    except (plistlib.InvalidFileException, ValueError):
        return {}
    environment = job.get("EnvironmentVariables") if isinstance(job, dict) else None
    if not isinstance(environment, dict):
        return {}
    return {str(key): str(value) for key, value in environment.items()}


def _absolute(path: Path) -> Path:
    if not path.is_absolute():
        raise ValueError(f"the service needs an absolute config path, not {str(path)!r}")
    return path


def _reject_control_chars(text: str) -> None:
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in text):
        raise ValueError(f"control characters cannot go into a service file: {text!r}")
