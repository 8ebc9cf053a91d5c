"""Byte sizes as people write them ("2GB", "512MiB") and as lmkeeperd reports them.

Units: GB is 10^9 bytes (what disk and RAM vendors, LM Studio and `free -g --si`
use), GiB is 2^30. Every `*_gb` figure lmkeeperd logs or sends is decimal GB with
two decimals.
"""

from __future__ import annotations

import math
import re

GB = 1_000_000_000

_UNITS: dict[str, int] = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_SIZE = re.compile(r"^\s*(?P<number>[^\sa-zA-Z]*)\s*(?P<unit>[a-zA-Z]*)\s*$")


def parse_size(value: str) -> int:
    """Bytes in `value`: "2GB", "1.5 GB", "512MiB", "4096" (plain bytes).

    Units are case-insensitive: B, KB, MB, GB, TB (powers of 1000) and KiB, MiB,
    GiB, TiB (powers of 1024). An empty string is an error here: callers that
    treat "" as "disabled" check for it first.
    """
    match = _SIZE.match(value)
    if match is None:
        raise ValueError(
            f"bad size {value!r}: expected a number and a unit, like '2GB' or '512MiB'"
        )
    number_text, unit_text = match.group("number"), match.group("unit")
    if not number_text:
        raise ValueError(f"bad size {value!r}: the number is missing (write e.g. '2GB')")
    try:
        number = float(number_text)
    except ValueError:
        raise ValueError(f"bad size {value!r}: {number_text!r} is not a number") from None
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"bad size {value!r}: {number_text!r} must be a finite number >= 0")
    multiplier = _UNITS.get(unit_text.lower() if unit_text else "b")
    if multiplier is None:
        raise ValueError(
            f"bad size {value!r}: unknown unit {unit_text!r} "
            "(use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB)"
        )
    return round(number * multiplier)


def to_gb(n_bytes: int | float) -> float:
    """Decimal GB with two decimals, the unit of every `*_gb` field."""
    return round(n_bytes / GB, 2)
