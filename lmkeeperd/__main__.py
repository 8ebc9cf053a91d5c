"""`python -m lmkeeperd` is the `lmkeeperd` command."""

from __future__ import annotations

from lmkeeperd.cli import main

main()
