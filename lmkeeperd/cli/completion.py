"""`lmkeeperd completion bash|zsh|fish`: shell completion generated from the command table.

The scripts name every command, subcommand and option of cli/table.py, so they
never drift from the parser. A MODEL argument is completed from the running
daemon by the hidden `_complete-models` command (a short socket request; it
prints nothing when no daemon runs, and never an error: completion must stay
silent). `--config` completes file names, `--run-as` user names.

zsh runs the bash function through its `bashcompinit` layer: one completion
logic, the one tests/cli/test_completion.py drives in a real bash.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Iterator
from typing import Any

from lmkeeperd.cli.table import COMMANDS, COMPLETE_MODELS, PROG, Command, Group

SHELLS = ("bash", "zsh", "fish")
# Short: a completion that keeps the prompt waiting is worse than none.
_MODELS_TIMEOUT_S = 0.5


def script(shell: str) -> int:
    """The `completion` command's handler."""
    from lmkeeperd.cli.output import BAD_USAGE, OK, error

    makers = {"bash": bash_script, "zsh": zsh_script, "fish": fish_script}
    maker = makers.get(shell.strip().lower())
    if maker is None:
        error(f"completion: no script for {shell!r}; choose one of {', '.join(SHELLS)}")
        return BAD_USAGE
    sys.stdout.write(maker())
    return OK


def models(config: str | None = None) -> int:
    """The hidden `_complete-models` command: model keys, one a line; silent on any failure."""
    for key in sorted(set(_daemon_models(config))):
        print(key)
    return 0


def _daemon_models(config: str | None) -> Iterator[str]:
    from lmkeeperd.control.client import request

    try:
        from lmkeeperd.cli.commands import socket_for

        sock = socket_for(config)  # lenient: a bad edit of the config still completes
        # `models` (the server's whole listing) where the daemon has it; else `status`,
        # which names what is loaded and selected.
        reply = request(sock, {"op": "models"}, timeout=_MODELS_TIMEOUT_S)
        if reply.get("ok") is True and isinstance(reply.get("models"), list):
            yield from _keys(reply["models"])
            return
        reply = request(sock, {"op": "status"}, timeout=_MODELS_TIMEOUT_S)
    except Exception:  # no daemon, a bad config, a slow daemon: complete nothing
        return
    status = reply.get("status")
    status = status if isinstance(status, dict) else {}
    server = status.get("server")
    server = server if isinstance(server, dict) else {}
    yield from _keys([*(server.get("loaded") or []), status.get("model"), status.get("selected")])


def _keys(items: list[Any]) -> Iterator[str]:
    for item in items:
        key = item.get("key") if isinstance(item, dict) else item
        if isinstance(key, str) and key.strip() and not any(c.isspace() for c in key):
            yield key


# --- what the scripts are made of ------------------------------------------------


class _Row:
    """One completable command line: its words, flags, and what its positional takes."""

    def __init__(self, words: tuple[str, ...], command: Command) -> None:
        self.words = words
        self.flags = ["-h", *(o.flag for o in command.opts if not o.hidden)]
        self.valued = [o.flag for o in command.opts if not o.hidden and o.kind != "flag"]
        dests = [a.dest for a in command.args]
        self.positional = "models" if "model" in dests else "shells" if "shell" in dests else ""
        self.help = command.help.split("\n", 1)[0]


def _rows() -> list[_Row]:
    rows: list[_Row] = []
    for entry in COMMANDS:
        if isinstance(entry, Group):
            rows.extend(_Row((entry.name, c.name), c) for c in entry.commands if not c.hidden)
        elif not entry.hidden:
            rows.append(_Row((entry.name,), entry))
    return rows


def _visible_top() -> list[Command | Group]:
    return [e for e in COMMANDS if isinstance(e, Group) or not e.hidden]


def bash_script() -> str:
    rows = _rows()
    groups = [e for e in COMMANDS if isinstance(e, Group)]
    top = " ".join(["-h", "--version", *(e.name for e in _visible_top())])
    group_cases = "".join(
        f"        {g.name}) words_in_cmd=2 ;;\n" for g in groups
    )  # a group's command is two words
    sub_cases = "".join(
        f'            {g.name}) COMPREPLY=($(compgen -W {shlex.quote(" ".join(["-h", *(c.name for c in g.commands if not c.hidden)]))} -- "$cur")) ;;\n'  # noqa: E501
        for g in groups
    )
    row_cases = "".join(
        f"        {shlex.quote(' '.join(r.words))}) flags={shlex.quote(' '.join(r.flags))}; "
        f"valued={shlex.quote(' '.join(r.valued))}; positional={r.positional or '-'} ;;\n"
        for r in rows
    )
    return f"""# {PROG} completion for bash, generated from its command table by
# `{PROG} completion bash`. Install it once:
#   {PROG} completion bash > ~/.local/share/bash-completion/completions/{PROG}
# or add `source <({PROG} completion bash)` to ~/.bashrc.
_{PROG}() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" prev="${{COMP_WORDS[COMP_CWORD-1]}}"
    local words_in_cmd=1 flags="" valued="" positional="-" i config=""
    COMPREPLY=()
    if [[ $COMP_CWORD -eq 1 ]]; then
        COMPREPLY=($(compgen -W {shlex.quote(top)} -- "$cur"))
        return 0
    fi
    case "${{COMP_WORDS[1]}}" in
{group_cases}    esac
    if [[ $words_in_cmd -eq 2 && $COMP_CWORD -eq 2 ]]; then
        case "${{COMP_WORDS[1]}}" in
{sub_cases}        esac
        return 0
    fi
    local cmd="${{COMP_WORDS[1]}}"
    [[ $words_in_cmd -eq 2 ]] && cmd="$cmd ${{COMP_WORDS[2]}}"
    case "$cmd" in
{row_cases}        *) return 0 ;;
    esac
    case "$prev" in
        --config) COMPREPLY=($(compgen -f -- "$cur")); return 0 ;;
        --run-as) COMPREPLY=($(compgen -u -- "$cur")); return 0 ;;
    esac
    for i in $valued; do
        [[ "$prev" == "$i" ]] && return 0  # a value of its own: nothing to offer
    done
    if [[ "$cur" == -* ]]; then
        COMPREPLY=($(compgen -W "$flags" -- "$cur"))
        return 0
    fi
    case "$positional" in
        shells) COMPREPLY=($(compgen -W {shlex.quote(" ".join(SHELLS))} -- "$cur")) ;;
        models)
            for ((i = 1; i < COMP_CWORD; i++)); do
                if [[ "${{COMP_WORDS[i]}}" == --config ]]; then
                    config="${{COMP_WORDS[i+1]}}"
                elif [[ "${{COMP_WORDS[i]}}" == --config=* ]]; then
                    config="${{COMP_WORDS[i]#--config=}}"
                fi
            done
            local found
            if [[ -n "$config" ]]; then
                found="$("${{COMP_WORDS[0]}}" {COMPLETE_MODELS} --config "$config" 2>/dev/null)"
            else
                found="$("${{COMP_WORDS[0]}}" {COMPLETE_MODELS} 2>/dev/null)"
            fi
            COMPREPLY=($(compgen -W "$found" -- "$cur"))
            ;;
    esac
    return 0
}}
complete -F _{PROG} {PROG}
"""


def zsh_script() -> str:
    return (
        f"# {PROG} completion for zsh, generated by `{PROG} completion zsh`: the bash\n"
        "# completion through zsh's bashcompinit. Install it once:\n"
        f"#   {PROG} completion zsh > ~/.{PROG}-completion.zsh\n"
        f"#   echo 'source ~/.{PROG}-completion.zsh' >> ~/.zshrc\n"
        "autoload -U +X compinit && compinit\n"
        "autoload -U +X bashcompinit && bashcompinit\n" + bash_script()
    )


_FISH_VALUES = {"--config": " -r -F", "--run-as": " -r -a '(__fish_complete_users)'"}


def fish_script() -> str:
    lines = [
        f"# {PROG} completion for fish, generated by `{PROG} completion fish`. Install it once:",
        f"#   {PROG} completion fish > ~/.config/fish/completions/{PROG}.fish",
        f"complete -c {PROG} -f",
        f"complete -c {PROG} -n __fish_use_subcommand -l version -d 'Print the version'",
    ]
    for entry in _visible_top():
        lines.append(
            f"complete -c {PROG} -n __fish_use_subcommand -a {entry.name} "
            f"-d {shlex.quote(entry.help.split(chr(10), 1)[0])}"
        )
    for group in (e for e in COMMANDS if isinstance(e, Group)):
        for command in group.commands:
            if command.hidden:
                continue
            lines.append(
                f"complete -c {PROG} -n '__fish_seen_subcommand_from {group.name}' "
                f"-a {command.name} -d {shlex.quote(command.help.split(chr(10), 1)[0])}"
            )
    group_names = " ".join(e.name for e in COMMANDS if isinstance(e, Group))
    for row in _rows():
        seen = " && ".join(f"__fish_seen_subcommand_from {w}" for w in row.words)
        if len(row.words) == 1 and group_names:  # `status`, not `service status`
            seen += f" && not __fish_seen_subcommand_from {group_names}"
        condition = shlex.quote(seen)
        for flag in row.flags[1:]:
            extra = _FISH_VALUES.get(flag, " -r" if flag in row.valued else "")
            lines.append(f"complete -c {PROG} -n {condition} -l {flag.removeprefix('--')}{extra}")
        if row.positional == "models":
            # The program as typed (a venv's path, say), escaped for eval.
            models_cmd = f"eval (string escape -- (commandline -opc)[1]) {COMPLETE_MODELS}"
            lines.append(f"complete -c {PROG} -n {condition} -a '({models_cmd} 2>/dev/null)'")
        elif row.positional == "shells":
            lines.append(f"complete -c {PROG} -n {condition} -a {shlex.quote(' '.join(SHELLS))}")
    return "\n".join(lines) + "\n"
