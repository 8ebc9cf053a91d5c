"""residency_feed.py in process, against the real emulator and the real core: L25's
estimates (the draft counted with its main model, once per model) and L23 for
`[model] pinned` (an unknown key reported, left out of the core's settings)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import structlog
from inprocess_harness import config_for, inprocess_daemon, load, run, until

from lmkeeperd.emulator import Emulator

A = "qwen/qwen3-4b-2507"
DRAFT = "qwen/qwen2.5-0.5b-instruct"
E = "text-embedding-nomic-embed-text-v1.5"


def test_L25_the_estimate_counts_the_draft_with_its_main_model(
    emulator: Emulator, tmp_path: Path
) -> None:
    base = config_for(emulator)
    config = replace(base, model=replace(base.model, draft_model=DRAFT))

    async def main() -> None:
        async with inprocess_daemon(emulator, tmp_path, config) as d:
            await d.view.list_now()
            await load(d, A)
            memory = d.ops.memory
            own = memory.estimate(d.view.models[A])
            draft = memory.estimate(d.view.models[DRAFT])
            assert own is not None and draft is not None
            expected = round((own.total_bytes + draft.total_bytes) / 1e9, 3)
            row = await until(
                lambda: [r for r in d.core.residents_view() if r.model == A and r.estimate_gb],
                "A's estimate",
            )
            assert row[0].estimate_gb == expected
            assert (own.total_bytes / 1e9) < row[0].estimate_gb

    run(main())


def test_L23_an_unknown_pinned_key_is_reported_once_and_never_reaches_the_core(
    emulator: Emulator, tmp_path: Path
) -> None:
    base = config_for(emulator)
    config = replace(base, model=replace(base.model, pinned=("embed-typo", E)))

    async def main() -> None:
        async with inprocess_daemon(emulator, tmp_path, config) as d:
            assert tuple(d.core.settings.pinned) == ()  # nothing pinned before the catalog
            with structlog.testing.capture_logs() as logs:
                await d.view.list_now()
                await d.view.list_now()
            assert tuple(d.core.settings.pinned) == (E,)
            unknown = [e for e in logs if e["event"] == "selection_unknown"]
            assert len(unknown) == 1  # once, not at every listing
            assert unknown[0]["model"] == "embed-typo" and unknown[0]["source"] == "pinned"
            assert unknown[0]["log_level"] == "warning"

    run(main())
