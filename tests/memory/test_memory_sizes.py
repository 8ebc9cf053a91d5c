"""parse_size for `[memory] pressure_eject_below`, and the GB figures we report."""

from __future__ import annotations

import pytest

from lmkeeperd.memory.sizes import parse_size, to_gb


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2GB", 2_000_000_000),
        ("1.5 GB", 1_500_000_000),
        ("512MiB", 512 * 2**20),
        ("2GiB", 2 * 2**30),
        ("  3 gb ", 3_000_000_000),
        ("100MB", 100_000_000),
        ("64KiB", 65536),
        ("1TB", 10**12),
        ("1TiB", 2**40),
        ("4096", 4096),
        ("4096B", 4096),
        ("0", 0),
        ("0.5kb", 500),
    ],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("", "the number is missing"),
        ("GB", "the number is missing"),
        ("2XB", "unknown unit 'XB'"),
        ("2 G", "unknown unit 'G'"),
        ("1.2.3GB", "'1.2.3' is not a number"),
        ("-1GB", "'-1' must be a finite number >= 0"),
        ("2 G B", "expected a number and a unit"),
    ],
)
def test_parse_size_errors_name_the_bad_part(text: str, names: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_size(text)
    assert names in str(info.value)
    assert repr(text) in str(info.value)


def test_gb_is_decimal_with_two_decimals() -> None:
    assert to_gb(24_000_000_000) == 24.0
    assert to_gb(2_497_280_256) == 2.5
    assert to_gb(1_234_567_890) == 1.23
