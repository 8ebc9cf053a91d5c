"""LM Studio's JSON answers -> lmkeeperd's records (lmstudio-real.md, lmstudio-api.md).

Pure functions: no I/O. A required field that is missing or of the wrong type
raises `ShapeError` naming it; optional fields of the wrong type are dropped,
unknown fields ignored, so minor differences between LM Studio versions pass.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from lmkeeperd.errors import LoadRefused
from lmkeeperd.lmstudio.models import LoadedInstance, LoadResult, ModelInfo, Quantization

# What LM Studio answers for a path or method it does not serve: HTTP 200 (or,
# rarely, 404) with this text in `error`. A 0.3.x server answers so for all of /api/v1.
UNEXPECTED_ENDPOINT = "Unexpected endpoint or method"
# In both auth refusals LM Studio is known to give: "An LM Studio API token is
# required…" (no token) and "Malformed LM Studio API token provided" (a wrong one).
AUTH_WORDS = "LM Studio API token"


class ShapeError(Exception):
    """A field of an answer is missing or has the wrong type; the message names it."""


def error_member(body: object) -> object:
    """The answer's `error` member (None if absent or null): its presence makes it an error."""
    return body.get("error") if isinstance(body, dict) else None


def error_code(body: object) -> str | None:
    """`error.code` when `error` is an object (e.g. "invalid_api_key")."""
    error = error_member(body)
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) else None


def says_not_found(body: object, said: str, model: str) -> bool:
    """An error answer saying the model is not there (whatever its status code)."""
    code = error_code(body) or ""
    return code.endswith("not_found") or (model in said and "not found" in said.lower())


# LM Studio's guardrail refusals, every wording seen (lmstudio-real.md): 0.3.27+ "Model
# loading was stopped due to insufficient system resources...", older "...aborted due to
# insufficient system resources...", the UI's "Not enough resources to load the model...".
GUARDRAIL_WORDS = ("insufficient system resources", "not enough resources")
GUARDRAIL_CHARS = 600  # the refusal is ~330 characters: carried whole


def load_refused(base_url: str, model: str, status: int, said: str) -> LoadRefused:
    """The error for a guardrail refusal; `said` is the server's message, made printable."""
    return LoadRefused(
        f"LM Studio at {base_url} refused to load {model!r} for lack of resources "
        f"(HTTP {status}): {said}",
        model=model,
        server_message=said,
        status_code=status,
    )


def says_refused_for_resources(said: str) -> bool:
    """An error answer saying the load guardrail refused (recognised by its text only)."""
    lowered = said.lower()
    return any(words in lowered for words in GUARDRAIL_WORDS)


def kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"


def _required_str(item: Mapping[str, Any], name: str, where: str) -> str:
    value = item.get(name)
    if not isinstance(value, str) or not value:
        raise ShapeError(f"{where}{name}: expected a non-empty string, got {kind(value)}")
    return value


def _optional_str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _optional_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _optional_float(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _frozen_mapping(value: object) -> Mapping[str, Any]:
    return MappingProxyType(dict(value)) if isinstance(value, dict) else MappingProxyType({})


def _quantization(value: object) -> Quantization | None:
    if isinstance(value, dict):
        return Quantization(
            name=_optional_str(value.get("name")),
            bits_per_weight=_optional_float(value.get("bits_per_weight")),
        )
    if isinstance(value, str):  # the v0 shape, in case a server mixes them
        return Quantization(name=value)
    return None


def _instances(value: object, where: str) -> tuple[LoadedInstance, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ShapeError(f"{where}loaded_instances: expected a list, got {kind(value)}")
    instances = []
    for index, item in enumerate(value):
        here = f"{where}loaded_instances[{index}]."
        if not isinstance(item, dict):
            raise ShapeError(f"{here[:-1]}: expected an object, got {kind(item)}")
        instances.append(
            LoadedInstance(
                id=_required_str(item, "id", here), config=_frozen_mapping(item.get("config"))
            )
        )
    return tuple(instances)


def parse_models(body: object) -> list[ModelInfo]:
    """`GET /api/v1/models`'s body as records; raises ShapeError naming a bad required field."""
    models = body.get("models") if isinstance(body, dict) else None
    if not isinstance(models, list):
        raise ShapeError(f"models: expected a list, got {kind(models)}")
    parsed = []
    for index, item in enumerate(models):
        where = f"models[{index}]."
        if not isinstance(item, dict):
            raise ShapeError(f"models[{index}]: expected an object, got {kind(item)}")
        parsed.append(
            ModelInfo(
                key=_required_str(item, "key", where),
                type=_optional_str(item.get("type")) or "llm",
                publisher=_optional_str(item.get("publisher")),
                display_name=_optional_str(item.get("display_name")),
                architecture=_optional_str(item.get("architecture")),
                quantization=_quantization(item.get("quantization")),
                size_bytes=_optional_int(item.get("size_bytes")),
                params_string=_optional_str(item.get("params_string")),
                format=_optional_str(item.get("format")),
                max_context_length=_optional_int(item.get("max_context_length")),
                loaded_instances=_instances(item.get("loaded_instances"), where),
            )
        )
    return parsed


def parse_load_result(body: object) -> LoadResult:
    """`POST /api/v1/models/load`'s body as a record; raises ShapeError if it has no instance id.

    Before 0.4.0 the id was called `model_instance_id` (lmstudio-real.md); either is accepted.
    """
    if not isinstance(body, dict):
        raise ShapeError(f"expected an object, got {kind(body)}")
    name = "instance_id"
    if body.get(name) is None and body.get("model_instance_id") is not None:
        name = "model_instance_id"
    load_config = body.get("load_config")
    return LoadResult(
        instance_id=_required_str(body, name, ""),
        type=_optional_str(body.get("type")),
        load_time_seconds=_optional_float(body.get("load_time_seconds")),
        status=_optional_str(body.get("status")),
        load_config=_frozen_mapping(load_config) if isinstance(load_config, dict) else None,
    )
