"""Finding a model's GGUF (or MLX folder) in a fake LM Studio models folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from gguf_synth import write_lmstudio_model

from lmkeeperd.lmstudio.models import ModelInfo, Quantization
from lmkeeperd.memory.locate import find_model_files


def _touch(path: Path, size: int = 16) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        f.truncate(size)
    return path


@pytest.fixture
def models(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    qwen = root / "lmstudio-community" / "Qwen3-8B-GGUF"
    _touch(qwen / "Qwen3-8B-Q4_K_M.gguf", 5000)
    _touch(qwen / "Qwen3-8B-Q4_K_S.gguf", 4800)
    _touch(qwen / "Qwen3-8B-Q8_0.gguf", 8700)
    _touch(qwen / "mmproj-Qwen3-8B-F16.gguf", 600)
    big = root / "unsloth" / "Qwen3-235B-A22B-GGUF" / "Q4_K_M"
    for i in (3, 1, 2):
        _touch(big / f"Qwen3-235B-A22B-Q4_K_M-0000{i}-of-00003.gguf", 100 * i)
    mlx = root / "mlx-community" / "Qwen3-4B-4bit"
    _touch(mlx / "config.json")
    _touch(mlx / "model.safetensors", 2000)
    _touch(root / "bartowski" / "Llama-3.2-1B-Instruct-GGUF" / "Llama-3.2-1B-Instruct-Q8_0.gguf")
    _touch(root / "other" / "Llama-3.2-1B-Instruct-GGUF" / "Llama-3.2-1B-Instruct-Q4_0.gguf")
    _touch(root / "vision" / "Only-Projector-GGUF" / "mmproj-model-f16.gguf")
    return root


def _model(key: str, quant: str | None = None, size: int | None = None) -> ModelInfo:
    return ModelInfo(
        key=key,
        quantization=Quantization(name=quant) if quant else None,
        size_bytes=size,
    )


def test_publisher_and_repo_match_case_insensitively_without_the_gguf_suffix(
    models: Path,
) -> None:
    found = find_model_files(_model("lmstudio-community/qwen3-8b-gguf", "Q8_0"), models)
    assert found is not None
    assert [p.name for p in found.gguf] == ["Qwen3-8B-Q8_0.gguf"]
    found = find_model_files(_model("lmstudio-community/qwen3-8b", "Q8_0"), models)
    assert found is not None and found.gguf[0].name == "Qwen3-8B-Q8_0.gguf"


def test_a_key_without_publisher_matches_a_unique_repo_folder(models: Path) -> None:
    found = find_model_files(_model("qwen3-8b", "Q4_K_M"), models)
    assert found is not None
    assert found.gguf[0].name == "Qwen3-8B-Q4_K_M.gguf"
    assert found.choice == ""


def test_an_at_variant_in_the_key_picks_that_quantization(models: Path) -> None:
    found = find_model_files(_model("qwen3-8b@q8_0", "Q4_K_M"), models)
    assert found is not None and found.gguf[0].name == "Qwen3-8B-Q8_0.gguf"


def test_q4_k_m_does_not_match_q4_k_s_and_q4_k_matches_neither(models: Path) -> None:
    found = find_model_files(_model("qwen3-8b", "Q4_K_S"), models)
    assert found is not None and found.gguf[0].name == "Qwen3-8B-Q4_K_S.gguf"
    # No file is named for "Q4_K": fall back to the size the server reports.
    found = find_model_files(_model("qwen3-8b", "Q4_K", size=4790), models)
    assert found is not None and found.gguf[0].name == "Qwen3-8B-Q4_K_S.gguf"
    assert "no file named for Q4_K" in found.choice


def test_without_quantization_the_closest_size_wins(models: Path) -> None:
    found = find_model_files(_model("qwen3-8b", size=8000), models)
    assert found is not None and found.gguf[0].name == "Qwen3-8B-Q8_0.gguf"
    assert "closest in size" in found.choice


def test_the_vision_projector_is_never_the_model(models: Path) -> None:
    found = find_model_files(_model("qwen3-8b", "F16"), models)
    assert found is not None
    assert not found.gguf[0].name.startswith("mmproj")
    assert find_model_files(_model("vision/only-projector"), models) is None


def test_split_models_are_read_from_the_first_shard(models: Path) -> None:
    found = find_model_files(_model("unsloth/qwen3-235b-a22b-gguf", "Q4_K_M"), models)
    assert found is not None
    assert [p.name for p in found.gguf] == [
        f"Qwen3-235B-A22B-Q4_K_M-0000{i}-of-00003.gguf" for i in (1, 2, 3)
    ]
    assert found.size_bytes == 100 + 200 + 300


def test_an_mlx_folder_yields_its_config(models: Path) -> None:
    found = find_model_files(_model("mlx-community/qwen3-4b-4bit"), models)
    assert found is not None
    assert found.gguf == ()
    assert found.config_json == models / "mlx-community" / "Qwen3-4B-4bit" / "config.json"


def test_the_same_repo_under_two_publishers_needs_the_publisher(models: Path) -> None:
    assert find_model_files(_model("llama-3.2-1b-instruct"), models) is None
    found = find_model_files(_model("bartowski/llama-3.2-1b-instruct"), models)
    assert found is not None and found.gguf[0].name == "Llama-3.2-1B-Instruct-Q8_0.gguf"
    found = find_model_files(_model("other/llama-3.2-1b-instruct"), models)
    assert found is not None and found.gguf[0].name == "Llama-3.2-1B-Instruct-Q4_0.gguf"


def test_catalog_keys_naming_no_folder_are_not_found(models: Path) -> None:
    assert find_model_files(_model("qwen/qwen3-4b-2507", "Q4_K_M"), models) is None


def test_a_missing_models_folder_finds_nothing(tmp_path: Path) -> None:
    assert find_model_files(_model("qwen3-8b"), tmp_path / "absent") is None


def test_the_synthetic_layout_helper_is_found_by_the_resolver(tmp_path: Path) -> None:
    path = write_lmstudio_model(
        tmp_path, "lmstudio-community", "Qwen3-8B-GGUF", "qwen3-8b", quantization="Q8_0"
    )
    assert path.name == "Qwen3-8B-Q8_0.gguf"
    found = find_model_files(_model("lmstudio-community/qwen3-8b", "Q8_0"), tmp_path)
    assert found is not None and found.gguf == (path,)
