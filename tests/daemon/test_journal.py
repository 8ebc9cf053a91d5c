"""The journal (lmkeeperd/daemon/journal.py): written before sending, settled by outcomes or
by what the server lists, read back by the next daemon, never fatal when unreadable."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from lmkeeperd.daemon.journal import Journal

A = "qwen/qwen3-4b-2507"
B = "meta-llama/llama-3.1-8b-instruct"


class Wall:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def reopened(path: Path, wall: Wall) -> Journal:
    journal = Journal(path, wall=wall)
    journal.open()
    return journal


def test_a_load_is_on_disk_while_in_flight_and_gone_once_settled(tmp_path: Path) -> None:
    path, wall = tmp_path / "journal.json", Wall()
    journal = Journal(path, wall=wall)
    key = journal.begin_load(1, A, [A], timeout=60)
    data = json.loads(path.read_text())
    assert data["version"] == 1
    [entry] = data["entries"].values()
    assert entry == {
        "kind": "load",
        "model": A,
        "instance_id": None,
        "before": [A],
        "started": wall.now,
        "deadline": wall.now + 120,  # abandoned at 60 s, it may land within another 60
    }
    assert os.stat(path).st_mode & 0o777 == 0o600
    journal.settle(key)
    assert not path.exists()  # nothing in flight: no file


def test_an_inherited_load_is_waited_for_until_its_deadline(tmp_path: Path) -> None:
    path, wall = tmp_path / "journal.json", Wall()
    Journal(path, wall=wall).begin_load(1, A, [], timeout=60)  # then the daemon dies
    journal = reopened(path, wall)
    pending = journal.pending_load(A)
    assert pending is not None and journal.pending_load(B) is None
    key, _ = pending
    journal.claim(key)
    assert journal.pending_load(A) is None  # one waiter at a time
    assert journal.collect({}, owned=()) == []  # a claimed entry is the waiter's
    journal.release(key)
    assert journal.landed(key, [A], owned=()) == A
    wall.now += 119
    assert journal.pending_load(A) is not None
    assert journal.collect({}, owned=()) == []
    wall.now += 1
    assert journal.pending_load(A) is None  # a new load may go now
    assert journal.collect({}, owned=()) == []  # given up: forgotten
    assert journal.entries() == {}


def test_a_landed_load_is_a_stray_but_instances_listed_before_it_never_are(
    tmp_path: Path,
) -> None:
    wall = Wall()
    journal = Journal(tmp_path / "j.json", wall=wall)
    key = journal.begin_load(1, A, [A], timeout=60)  # the user had `A` loaded already (L18)
    journal.release(key)
    assert journal.collect({A: (A,)}, owned=()) == []
    assert journal.collect({A: (A, f"{A}:2")}, owned=()) == [(A, f"{A}:2")]
    # Reported once, and held from then on: the core adopts it or unloads it.
    [(key, entry)] = journal.entries().items()
    assert (key, entry.kind, entry.instance_id) == (f"inst:{A}:2", "held", f"{A}:2")
    assert journal.collect({A: (A, f"{A}:2")}, owned={f"{A}:2"}) == []


def test_a_held_instance_outlives_a_crash_but_not_a_clean_stop_or_another_engine(
    tmp_path: Path,
) -> None:
    path, wall = tmp_path / "j.json", Wall()
    journal = Journal(path, wall=wall)
    key = journal.begin_load(1, A, [], timeout=60)
    journal.hold(A, A, key)  # the load's answer
    assert [e.kind for e in journal.entries().values()] == ["held"]
    assert journal.collect({A: (A,)}, owned={A}) == []  # the core's main model
    after_crash = reopened(path, wall)  # kill -9 while A was loaded
    assert after_crash.collect({A: (A,)}, owned=()) == [(A, A)]
    journal.drop_held()  # a clean stop, or the engine moved away (L13)
    assert not path.exists()
    assert reopened(path, wall).collect({A: (A,)}, owned=()) == []
    unload = journal.begin_unload(B, B)
    journal.release(unload)
    journal.drop_held()  # an unload that failed is no hand-over: it stays for a retry
    assert list(journal.entries()) == [unload]


def test_an_abandoned_load_gets_another_load_timeout_to_land(tmp_path: Path) -> None:
    wall = Wall()
    journal = Journal(tmp_path / "j.json", wall=wall)
    key = journal.begin_load(1, A, [], timeout=10)
    wall.now += 10
    journal.abandon(key)
    wall.now += 9
    assert journal.pending_load(A) is not None
    assert journal.collect({A: (A,)}, owned=()) == [(A, A)]


def test_no_stray_is_reported_for_a_model_while_a_load_of_it_is_in_flight(
    tmp_path: Path,
) -> None:
    wall = Wall()
    journal = Journal(tmp_path / "j.json", wall=wall)
    old = journal.begin_load(1, A, [], timeout=10)
    journal.abandon(old)
    wall.now += 21  # past its deadline: a new load of A was sent
    new = journal.begin_load(2, A, [], timeout=10)
    # Listed before the new load's answer came: it may be the new load's instance.
    assert journal.collect({A: (A,)}, owned=()) == []
    journal.hold(A, A, new)  # its answer: A is the core's now
    assert journal.collect({A: (A, f"{A}:2")}, owned={A}) == [(A, f"{A}:2")]


def test_a_failed_unload_is_retried_while_listed_and_settled_once_gone(tmp_path: Path) -> None:
    path, wall = tmp_path / "j.json", Wall()
    journal = Journal(path, wall=wall)
    key = journal.begin_unload(A, A)
    assert journal.collect({A: (A,)}, owned=()) == []  # in flight: its task reports it
    journal.release(key)  # it failed (hung, refused)
    assert journal.collect({A: (A,)}, owned=()) == [(A, A)]
    assert journal.collect({A: (A,)}, owned={A}) == []  # the core has it again
    assert reopened(path, wall).collect({A: (A,)}, owned=()) == [(A, A)]  # survives a crash
    assert journal.collect({}, owned=()) == []
    assert not path.exists()
    again = journal.begin_unload(A, A)
    assert list(journal.entries()) == [again]  # one entry per instance, retries replace it


def test_ours_names_the_entry_that_makes_an_instance_lmkeeperds(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.json", wall=Wall())
    load = journal.begin_load(1, A, [A], timeout=60)
    journal.release(load)
    unload = journal.begin_unload(B, B)
    journal.release(unload)
    assert journal.ours(A, A) is None  # listed before the load: not ours
    assert journal.ours(A, f"{A}:2") == load
    assert journal.ours(B, B) == unload
    assert journal.ours(B, f"{B}:2") is None


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b'{"version": 2, "entries": {}}',
        b'{"version": 1, "entries": {"k": {"kind": "nuke", "model": "m"}}}',
        b'{"version": 1, "entries": {"k": {"kind": "unload", "model": "m", "started": 1,'
        b' "deadline": 1}}}',
        b'{"version": 1, "entries": {"k": {"kind": "load", "model": "m", "started": "x",'
        b' "deadline": 1}}}',
        b"\xff\xfe",
    ],
)
def test_a_corrupt_journal_is_reported_and_ignored(
    tmp_path: Path, content: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "j.json"
    path.write_bytes(content)
    journal = Journal(path, wall=Wall())
    assert journal.open() == 0
    assert journal.entries() == {}
    assert "journal_unreadable" in capsys.readouterr().out
    journal.begin_unload(A, A)  # and the next write replaces it
    assert json.loads(path.read_text())["entries"]


def test_a_fifo_or_a_huge_file_as_journal_never_blocks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    assert Journal(fifo).open() == 0  # would block forever if opened for reading plainly
    huge = tmp_path / "huge.json"
    with open(huge, "wb") as f:
        f.truncate(1 << 30)  # sparse: 1 GiB without the disk
    assert Journal(huge).open() == 0
    out = capsys.readouterr().out
    assert "a FIFO" in out and "1073741824 bytes" in out


def test_a_journal_that_cannot_be_written_is_a_warning_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "dir.json").mkdir()
    journal = Journal(tmp_path / "dir.json")
    key = journal.begin_load(1, A, [], timeout=1)
    journal.settle(key)
    assert "journal_write_failed" in capsys.readouterr().out


def test_instances_of_a_model_a_load_task_works_on_are_left_to_that_task(tmp_path: Path) -> None:
    # After a crash, the restored selection's load lists the server while the reconcile does:
    # the held instance must come back as that load's outcome only, never also as a stray
    # (the core would adopt it, supersede the load and unload its outcome: the same instance).
    journal = Journal(tmp_path / "j.json", wall=Wall())
    journal.hold(A, A)
    assert journal.collect({A: (A,)}, owned=(), loading={A}) == []
    assert journal.ours(A, A) is not None  # what the load task asks instead
    assert journal.collect({A: (A,)}, owned=(), loading={B}) == [(A, A)]


def test_an_instance_reported_after_a_crash_says_whether_it_was_being_unloaded(
    tmp_path: Path,
) -> None:
    # The core never keeps one that was on its way out as a resident (OwnStray.leaving):
    # an unload command's instance may be a model lmkeeperd never loaded.
    path, wall = tmp_path / "j.json", Wall()
    journal = Journal(path, wall=wall)
    journal.hold(A, A)
    journal.release(journal.begin_unload(B, B))  # timed out: it may still be listed
    after_crash = reopened(path, wall)
    assert sorted(after_crash.collect({A: (A,), B: (B,)}, owned=())) == [(B, B), (A, A)]
    assert (after_crash.leaving(A), after_crash.leaving(B)) == (False, True)
    assert after_crash.leaving("not-journaled") is False
