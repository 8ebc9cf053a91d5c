"""The GGUF header reader: real shapes, big tokenizer arrays, and hostile input."""

from __future__ import annotations

import contextlib
import io
import struct
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from gguf_synth import (
    ARCHITECTURES,
    ARRAY,
    FLOAT64,
    INT8,
    STRING,
    UINT64,
    StringArray,
    Tensor,
    Typed,
    gguf_bytes,
    write_gguf,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmkeeperd.memory.gguf import (
    GGUFError,
    SkippedArray,
    SkippedString,
    read_gguf_header,
    read_gguf_header_from,
)


def test_reads_version_tensor_count_and_typed_metadata(tmp_path: Path) -> None:
    path = write_gguf(
        tmp_path / "m.gguf",
        {
            "general.architecture": "llama",
            "general.name": "Tiny",
            "llama.block_count": 2,
            "llama.rope.freq_base": 500000.0,
            "general.some_bool": True,
            "general.neg": -5,
            "general.big": 2**40,
            "general.f64": Typed(FLOAT64, 0.25),
            "general.i8": Typed(INT8, -3),
            "general.layers": [1, 2, 3],
        },
        tensors=[Tensor("token_embd.weight", (8, 4)), Tensor("output.weight", (8, 4))],
        tensor_data=True,
    )
    header = read_gguf_header(path)
    assert header.version == 3
    assert header.tensor_count == 2
    assert header.metadata == {
        "general.architecture": "llama",
        "general.name": "Tiny",
        "llama.block_count": 2,
        "llama.rope.freq_base": 500000.0,
        "general.some_bool": True,
        "general.neg": -5,
        "general.big": 2**40,
        "general.f64": 0.25,
        "general.i8": -3,
        "general.layers": (1, 2, 3),
    }


def test_stops_where_the_tensor_infos_begin(tmp_path: Path) -> None:
    meta = {"general.architecture": "llama", "llama.block_count": 2}
    bare = gguf_bytes(meta)
    path = write_gguf(
        tmp_path / "m.gguf", meta, tensors=[Tensor("token_embd.weight", (8, 4))], tensor_data=True
    )
    assert read_gguf_header(path).metadata_end == len(bare)


def test_version_2_is_read_like_version_3(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "v2.gguf", {"general.architecture": "llama"}, version=2)
    assert read_gguf_header(path).version == 2


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_real_architectures_round_trip(tmp_path: Path, name: str) -> None:
    arch = ARCHITECTURES[name]
    path = write_gguf(tmp_path / f"{name}.gguf", arch.metadata(), tensors=arch.tensors())
    header = read_gguf_header(path)
    assert header.metadata["general.architecture"] == arch.arch
    assert header.tensor_count == len(arch.tensors())
    for key, value in arch.fields.items():
        expected = tuple(value) if isinstance(value, list) else value
        assert header.metadata[f"{arch.arch}.{key}"] == expected


def test_big_tokenizer_arrays_are_walked_not_kept(tmp_path: Path) -> None:
    metadata: dict[str, Any] = ARCHITECTURES["qwen3-8b"].metadata()
    metadata["tokenizer.ggml.tokens"] = StringArray(150_000, lambda i: f"token-{i:06d}")
    metadata["tokenizer.ggml.token_type"] = [1] * 150_000
    metadata["tokenizer.ggml.merges"] = StringArray(150_000, lambda i: f"a{i} b{i}")
    metadata["tokenizer.chat_template"] = "{{ x }}" * 2000
    metadata["qwen3.after_the_arrays"] = 7
    path = write_gguf(tmp_path / "big.gguf", metadata)
    assert path.stat().st_size > 4_000_000

    tracemalloc.start()
    try:
        header = read_gguf_header(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert header.metadata["tokenizer.ggml.tokens"] == SkippedArray(STRING, 150_000)
    assert header.metadata["tokenizer.ggml.merges"] == SkippedArray(STRING, 150_000)
    assert header.metadata["tokenizer.ggml.token_type"] == SkippedArray(4, 150_000)
    assert header.metadata["tokenizer.chat_template"] == SkippedString(len("{{ x }}") * 2000)
    assert header.metadata["qwen3.after_the_arrays"] == 7
    assert header.metadata_end == path.stat().st_size
    # One 1 MiB read buffer (plus small change), not the 4+ MB of strings.
    assert peak < 3 * 1024 * 1024


def test_nested_arrays_are_skipped(tmp_path: Path) -> None:
    path = write_gguf(
        tmp_path / "nested.gguf",
        {"general.nested": [[1, 2], [3, 4, 5]], "general.after": "ok"},
    )
    header = read_gguf_header(path)
    assert header.metadata["general.nested"] == SkippedArray(ARRAY, 2)
    assert header.metadata["general.after"] == "ok"


def _header_prefix(version: int = 3, kv_count: int = 1) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", version, 0, kv_count)


def _error(data: bytes, max_bytes: int = 64 * 1024 * 1024) -> str:
    with pytest.raises(GGUFError) as info:
        read_gguf_header_from(io.BytesIO(data), max_bytes=max_bytes, name="f.gguf")
    return str(info.value)


def test_not_a_gguf_file_says_so() -> None:
    assert "not a GGUF file" in _error(b"PK\x03\x04 a zip file")
    assert "not a GGUF file" in _error(b"")


def test_version_1_is_refused_with_a_reason() -> None:
    message = _error(_header_prefix(version=1))
    assert "version 1" in message and "not supported" in message


def test_big_endian_and_unknown_versions_are_refused() -> None:
    assert "big-endian" in _error(b"GGUF" + struct.pack(">IQQ", 3, 0, 0))
    assert "unsupported GGUF version 9" in _error(_header_prefix(version=9))


def test_truncated_file_is_a_clear_error(tmp_path: Path) -> None:
    full = gguf_bytes(ARCHITECTURES["llama-3.1-8b"].metadata())
    for cut in (10, 30, len(full) // 2, len(full) - 1):
        message = _error(full[:cut])
        assert "f.gguf" in message and ("truncated" in message or "ends at byte" in message)


def test_huge_claimed_lengths_fail_without_reading(tmp_path: Path) -> None:
    key_too_long = _header_prefix() + struct.pack("<Q", 2**40)
    assert "claims" in _error(key_too_long)
    string_past_eof = _header_prefix() + _key("general.x") + struct.pack("<IQ", STRING, 2**62)
    assert "ends at byte" in _error(string_past_eof)
    array_past_eof = (
        _header_prefix() + _key("general.x") + struct.pack("<IIQ", ARRAY, UINT64, 2**61)
    )
    assert "ends at byte" in _error(array_past_eof)


def test_unknown_value_type_is_a_clear_error() -> None:
    data = _header_prefix() + _key("general.x") + struct.pack("<I", 13) + b"\0" * 16
    assert "unknown value type 13 for key 'general.x'" in _error(data)


def test_metadata_longer_than_the_cap_is_refused() -> None:
    data = gguf_bytes({"general.blob": StringArray(2000, lambda i: "x" * 100)})
    assert "refusing to read further" in _error(data, max_bytes=64 * 1024)
    assert read_gguf_header_from(io.BytesIO(data), max_bytes=len(data)).metadata_end == len(data)


def test_a_directory_or_missing_file_is_a_gguf_error(tmp_path: Path) -> None:
    with pytest.raises(GGUFError, match="cannot read"):
        read_gguf_header(tmp_path)
    with pytest.raises(GGUFError, match="cannot read"):
        read_gguf_header(tmp_path / "absent.gguf")


def _key(name: str) -> bytes:
    return struct.pack("<Q", len(name)) + name.encode()


class _RecordingStream(io.BytesIO):
    """Remembers the furthest byte any read asked for."""

    furthest = 0

    def read(self, size: int | None = -1, /) -> bytes:
        start = self.tell()
        data = super().read(size)
        self.furthest = max(self.furthest, start + len(data))
        return data


_CAP = 2048


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    tail=st.binary(max_size=4096),
    version=st.sampled_from([2, 3]),
    kv_count=st.integers(min_value=0, max_value=2**64 - 1),
)
def test_random_bytes_give_a_result_or_a_gguf_error_and_never_read_past_the_cap(
    tail: bytes, version: int, kv_count: int
) -> None:
    stream = _RecordingStream(b"GGUF" + struct.pack("<IQQ", version, 0, kv_count) + tail)
    try:
        header = read_gguf_header_from(stream, max_bytes=_CAP)
    except GGUFError:
        pass
    else:
        assert header.metadata_end <= _CAP
        assert len(header.metadata) <= kv_count
    assert stream.furthest <= _CAP


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=512))
def test_arbitrary_bytes_never_raise_anything_but_gguf_error(data: bytes) -> None:
    stream = _RecordingStream(data)
    with contextlib.suppress(GGUFError):
        read_gguf_header_from(stream, max_bytes=256)
    assert stream.furthest <= 256


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.text(min_size=1, max_size=20),
        st.one_of(
            st.integers(min_value=-(2**63), max_value=2**64 - 1),
            st.booleans(),
            st.text(max_size=50),
            st.lists(st.integers(min_value=0, max_value=2**32 - 1), max_size=10),
        ),
        max_size=10,
    )
)
def test_any_valid_metadata_round_trips(metadata: dict[str, Any]) -> None:
    data = gguf_bytes(metadata)
    header = read_gguf_header_from(io.BytesIO(data))
    expected = {k: tuple(v) if isinstance(v, list) else v for k, v in metadata.items()}
    assert header.metadata == expected
    assert header.metadata_end == len(data)
