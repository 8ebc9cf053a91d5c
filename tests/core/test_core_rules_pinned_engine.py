"""A pinned model taken up again on the return to LM Studio, then selected (L13, L24, L28)."""

from __future__ import annotations

from core_world import World, run_step

from lmkeeperd.core import Lifecycle, Settings


def test_L28_selecting_a_pinned_model_that_is_loading_again_makes_no_second_instance() -> None:
    # Found by the residency property test (derandomized): the user leaves LM Studio and
    # comes back (L13), the pinned model is loaded again (L28), and a selection of it while
    # that load is in flight must make it the current model (L24), never a second resident.
    world = World(Lifecycle(Settings(switch_debounce=0, max_loaded=1, pinned=("c",))))
    for kind, arg in [
        ("select", "a"),
        ("load_ok", 0),
        ("snapshot", False),
        ("engine", "ollama"),
        ("engine", "lmstudio"),
        ("select", "c"),  # World.check asserts one resident per model after every event
    ]:
        run_step(world, kind, arg)
    residents = world.core.residents_view()
    assert [r.model for r in residents].count("c") == 1, residents
