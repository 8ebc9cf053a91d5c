"""A stand-in for LM Studio's HTTP server, with fault injection (docs/emulator.md).

    from lmkeeperd.emulator import Emulator
    with Emulator() as emu:
        ...  # talk to emu.url; steer it with emu.set_load_delay(), emu.go_down(), ...

Standard library (plus websockets' sans-IO protocol for the websocket channel),
so it runs in a thread of a test process or on its own as
`python -m lmkeeperd.emulator --port 1234`.
"""

from __future__ import annotations

from lmkeeperd.emulator.catalog import (
    CatalogModel,
    catalog_to_json,
    default_catalog,
    load_catalog,
    parse_catalog,
)
from lmkeeperd.emulator.server import Emulator
from lmkeeperd.emulator.state import RequestRecord
from lmkeeperd.emulator.ws import FrameRecord

__all__ = [
    "CatalogModel",
    "Emulator",
    "FrameRecord",
    "RequestRecord",
    "catalog_to_json",
    "default_catalog",
    "load_catalog",
    "parse_catalog",
]
