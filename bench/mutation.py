"""Mutation testing of the core: how many changed cores do its own tests catch?

Runs mutmut (pinned below; pyproject.toml's `mutation` extra) on lmkeeperd/core/
against tests/core/ as `[tool.mutmut]` in pyproject.toml says, then prints how many
mutants were killed, survived, or are listed as equivalent in
tests/core/mutants_equivalent.txt, and the score: killed / (killed + survived), the
equivalent ones left out. docs/testing.md says how to read and keep it honest.

    .venv/bin/python bench/mutation.py                      # the whole core (~30 min)
    .venv/bin/python bench/mutation.py --only lmkeeperd/core/policy.py
    .venv/bin/python bench/mutation.py --only 'lmkeeperd.core.machine.xǁLifecycleǁ_select*'
    .venv/bin/python bench/mutation.py --report              # the last run's figures again

mutmut works in `mutants/` (ignored by git) and keeps its results there, so a second
run only tests mutants whose code or tests changed. Not in CI: it takes tens of minutes.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MUTMUT = "mutmut==3.8.1"
EQUIVALENTS = ROOT / "tests" / "core" / "mutants_equivalent.txt"
RUN_LOG = ROOT / "mutants" / "mutation-run.log"

# mutmut's statuses (mutmut/stats.py) in three groups. A mutant a test run catches any
# way (a failure, a hang past the timeout, a crash, the type checker) is killed.
KILLED = {"killed", "timeout", "segfault", "caught by type check"}
SURVIVED = {"survived", "no tests"}  # "no tests": no test even runs that code
# Neither caught nor passed: not counted in the score, listed for a look.
UNSURE = {"suspicious", "skipped", "check was interrupted by user"}


@dataclass(frozen=True, slots=True)
class Equivalent:
    pattern: str  # a mutant id, or a glob over ids
    reason: str
    line: int


@dataclass
class Tally:
    killed: list[str] = field(default_factory=list)
    survived: list[str] = field(default_factory=list)
    equivalent: list[str] = field(default_factory=list)
    unsure: list[str] = field(default_factory=list)

    @property
    def score(self) -> float | None:
        counted = len(self.killed) + len(self.survived)
        return 100.0 * len(self.killed) / counted if counted else None


def read_equivalents(path: Path) -> list[Equivalent]:
    """`<mutant id or glob> <reason>` per line; `#` starts a comment line."""
    entries: list[Equivalent] = []
    if not path.exists():
        return entries
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pattern, _, reason = line.partition(" ")
        if not reason.strip():
            raise SystemExit(f"{path}:{number}: {pattern!r} has no reason (one line, after it)")
        entries.append(Equivalent(pattern, reason.strip(), number))
    return entries


def scope_patterns(only: list[str]) -> list[str]:
    """`lmkeeperd/core/policy.py` or `lmkeeperd.core.policy` -> `lmkeeperd.core.policy.*`."""
    patterns = []
    for item in only:
        if any(c in item for c in "*?["):
            patterns.append(item)
            continue
        module = item.removesuffix(".py").replace("/", ".").strip(".")
        patterns.append(module + ".*")
    return patterns


def ensure_mutmut() -> Path:
    script = Path(sys.executable).parent / "mutmut"
    wanted = MUTMUT.split("==")[1]
    try:
        from importlib.metadata import version

        have = version("mutmut")
    except Exception:
        have = None
    if have != wanted or not script.exists():
        print(f"installing {MUTMUT} into {sys.prefix}", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", MUTMUT], check=True)
    return script


def run_mutmut(script: Path, patterns: list[str], max_children: int | None) -> float:
    RUN_LOG.parent.mkdir(exist_ok=True)
    # The property tests (hypothesis) keep failing examples in mutants/.hypothesis and replay
    # them first. An example found against one mutant is no evidence about the next, and one
    # that fails the unmutated core makes mutmut's clean run fail: start every run without.
    shutil.rmtree(ROOT / "mutants" / ".hypothesis", ignore_errors=True)
    command = [str(script), "run", *patterns]
    if max_children:
        command[2:2] = ["--max-children", str(max_children)]
    print("running:", " ".join(command), f"(its output: {RUN_LOG.relative_to(ROOT)})", flush=True)
    started = time.monotonic()
    with RUN_LOG.open("w", encoding="utf-8") as log:
        env = {**os.environ, "HYPOTHESIS_PROFILE": "mutation"}  # tests/conftest.py
        done = subprocess.run(
            command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, check=False
        )
    elapsed = time.monotonic() - started
    if done.returncode != 0:
        tail = RUN_LOG.read_text(encoding="utf-8", errors="replace")[-3000:]
        raise SystemExit(f"mutmut run failed ({done.returncode}):\n{tail}")
    return elapsed


def statuses(script: Path) -> dict[str, str]:
    done = subprocess.run(
        [str(script), "results", "--all", "true"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    found = {}
    for line in done.stdout.splitlines():
        match = re.fullmatch(r"\s*(\S+): (.+)", line)
        if match:
            found[match[1]] = match[2].strip()
    return found


def tally(
    found: dict[str, str], patterns: list[str], equivalents: list[Equivalent]
) -> tuple[Tally, list[Equivalent]]:
    t = Tally()
    used: set[int] = set()
    for name, status in sorted(found.items()):
        if status == "not checked":
            continue
        if patterns and not any(fnmatch.fnmatchcase(name, p) for p in patterns):
            continue
        if status in KILLED:
            t.killed.append(name)
        elif status in SURVIVED:
            listed = [e for e in equivalents if fnmatch.fnmatchcase(name, e.pattern)]
            used.update(e.line for e in listed)
            (t.equivalent if listed else t.survived).append(name)
        else:
            t.unsure.append(f"{name}: {status}")
    unused = [e for e in equivalents if e.line not in used]
    return t, unused


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        help="a core module (lmkeeperd/core/policy.py) or a glob over mutant ids; repeatable",
    )
    parser.add_argument("--max-children", type=int, help="mutmut's parallel workers")
    parser.add_argument("--report", action="store_true", help="no run: the last results")
    parser.add_argument("--equivalents", type=Path, default=EQUIVALENTS)
    parser.add_argument("--fail-under", type=float, help="exit 1 below this score (%%)")
    args = parser.parse_args()

    os.chdir(ROOT)
    equivalents = read_equivalents(args.equivalents)
    patterns = scope_patterns(args.only)
    script = ensure_mutmut()
    elapsed = None if args.report else run_mutmut(script, patterns, args.max_children)
    t, unused = tally(statuses(script), patterns, equivalents)

    scope = ", ".join(patterns) or "lmkeeperd/core/ (all)"
    took = "" if elapsed is None else f" in {elapsed:.0f} s"
    print(f"\nmutation testing of {scope} against tests/core/{took}")
    print(f"  killed      {len(t.killed):5}")
    print(f"  survived    {len(t.survived):5}")
    print(f"  equivalent  {len(t.equivalent):5}  (listed in {args.equivalents.name})")
    if t.unsure:
        print(f"  unsure      {len(t.unsure):5}  (suspicious/skipped: not in the score)")
    score = t.score
    print("  score       " + ("n/a" if score is None else f"{score:.1f} %"), end="")
    print("  (killed / (killed + survived), equivalents left out)")
    if t.survived:
        print("\nsurvivors (see one with: .venv/bin/mutmut show NAME):")
        for name in t.survived:
            print("  " + name)
    for line in t.unsure:
        print("  unsure: " + line)
    if unused and not patterns:
        print(f"\nentries of {args.equivalents.name} that match no surviving mutant (stale?):")
        for e in unused:
            print(f"  line {e.line}: {e.pattern}")
    if args.fail_under is not None and (score is None or score < args.fail_under):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
