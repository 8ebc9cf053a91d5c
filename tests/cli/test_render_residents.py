"""`lmkeeperd status` with several residents (cli/render.py, L24, L25): a table of them
when there is more than one, and the budget used."""

from __future__ import annotations

from typing import Any, cast

from lmkeeperd.cli.render import render, render_residents
from lmkeeperd.status_types import Status

A = "qwen/qwen3-4b-2507"
B = "meta-llama/llama-3.1-8b-instruct"
E = "text-embedding-nomic-embed-text-v1.5"


def resident(model: str, **changes: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "model": model,
        "instance_id": model,
        "state": "loaded",
        "pinned": False,
        "current": False,
        "last_used_ago_s": 12.0,
        "idle_eject_in_s": 1788.0,
        "estimate_gb": 2.9,
        "doing": None,
        "streams": 0,
    }
    row.update(changes)
    return row


def status(residents: list[dict[str, Any]], budget: dict[str, Any]) -> Status:
    return cast(Status, {"state": "loaded", "model": A, "resident": residents, "budget": budget})


BUDGET = {"used_gb": 8.1, "total_gb": 19.2, "source": "fraction", "residents": 3, "max_loaded": 2}


def test_L24_several_residents_are_a_table_with_the_current_marked() -> None:
    text = render(
        status(
            [
                resident(A, current=True, streams=1, doing="generating"),
                resident(B, last_used_ago_s=95.0, idle_eject_in_s=1705.0, estimate_gb=5.0),
                resident(
                    E, pinned=True, idle_eject_in_s=None, last_used_ago_s=None, estimate_gb=0.2
                ),
            ],
            BUDGET,
        )
    )
    assert "budget" in text and "8.1 GB of 19.2 GB used; 3 resident, max_loaded 2" in text
    table = text.split("resident models:\n", 1)[1].splitlines()
    assert table[0].split() == [
        "model",
        "state",
        "pinned",
        "last",
        "used",
        "idle",
        "eject",
        "GB",
        "doing",
        "streams",
    ]
    assert table[1].startswith("*") and A in table[1] and "generating" in table[1]
    assert table[1].rstrip().endswith("1")
    assert B in table[2] and "1m 35s ago" in table[2] and "28m 25s" in table[2]
    assert E in table[3] and "yes" in table[3] and "never" in table[3]


def test_one_resident_is_no_table_but_the_budget_shows() -> None:
    text = render(status([resident(A, current=True)], {**BUDGET, "residents": 1}))
    assert "resident models:" not in text
    assert "8.1 GB of 19.2 GB used; 1 resident" in text


def test_no_budget_says_models_are_counted_only() -> None:
    text = render(status([], {**BUDGET, "total_gb": None, "used_gb": 0.0, "source": "none"}))
    assert "no budget (counting models only)" in text


def test_render_residents_aligns_columns() -> None:
    lines = render_residents([resident(A, current=True), resident(B)]).splitlines()
    assert lines[1].index("loaded") == lines[2].index("loaded")
