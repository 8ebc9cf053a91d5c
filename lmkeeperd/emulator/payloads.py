"""The JSON bodies the emulator answers with, shaped as in lmstudio-api.md.

Pure functions of their arguments: no state, no sockets.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Sequence
from typing import Any

from lmkeeperd.emulator.catalog import CatalogModel

EMBEDDING_DIMENSIONS = 768

_WORDS = ("Hello", "from", "the", "lmkeeperd", "emulator,", "which", "is", "not", "a", "model.")


def v1_model(
    model: CatalogModel, instances: Sequence[tuple[str, dict[str, Any]]]
) -> dict[str, Any]:
    """One entry of `GET /api/v1/models`."""
    entry: dict[str, Any] = {
        "type": model.type,
        "publisher": model.publisher,
        "key": model.key,
        "display_name": model.display_name,
    }
    if model.type != "embedding":
        entry["architecture"] = model.architecture
    entry.update(
        {
            "quantization": _quantization(model),
            "size_bytes": model.size_bytes,
            "params_string": model.params_string,
            "loaded_instances": [
                {"id": instance_id, "config": config} for instance_id, config in instances
            ],
            "max_context_length": model.max_context_length,
            "format": model.format,
            "capabilities": {
                "vision": model.vision,
                "trained_for_tool_use": model.trained_for_tool_use,
            },
        }
    )
    return entry


def _quantization(model: CatalogModel) -> dict[str, Any] | None:
    if model.quantization is None and model.bits_per_weight is None:
        return None
    bits = model.bits_per_weight
    # LM Studio reports whole bit counts as integers ("bits_per_weight": 4).
    if isinstance(bits, float) and bits.is_integer():
        bits = int(bits)
    return {"name": model.quantization, "bits_per_weight": bits}


def v0_type(model: CatalogModel) -> str:
    if model.type == "embedding":
        return "embeddings"
    return "vlm" if model.vision else "llm"


def v0_model(
    model: CatalogModel, instances: Sequence[tuple[str, dict[str, Any]]]
) -> dict[str, Any]:
    """One entry of `GET /api/v0/models` (LM Studio 0.3.x)."""
    entry: dict[str, Any] = {
        "id": model.key,
        "object": "model",
        "type": v0_type(model),
        "publisher": model.publisher,
        "arch": model.architecture,
        "compatibility_type": model.format,
        "quantization": model.quantization,
        "state": "loaded" if instances else "not-loaded",
        "max_context_length": model.max_context_length,
    }
    if instances:
        entry["loaded_context_length"] = instances[0][1]["context_length"]
    return entry


def openai_model(model_id: str, model: CatalogModel) -> dict[str, Any]:
    """One entry of the OpenAI-style `GET /v1/models`."""
    return {"id": model_id, "object": "model", "owned_by": model.publisher or "organization_owner"}


def error_body(message: str, style: str, *, error_type: str, code: str | None) -> dict[str, Any]:
    """LM Studio-like error body in either shape a client must understand."""
    if style == "string":
        return {"error": message}
    return {"error": {"message": message, "type": error_type, "param": None, "code": code}}


def completion_pieces(chunks: int) -> list[str]:
    """The canned answer, cut into `chunks` pieces (streamed and whole answers agree)."""
    return [_WORDS[i % len(_WORDS)] + " " for i in range(chunks)]


def _completion_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


class Completion:
    """Builds the answer to one chat or text completion request, whole or in chunks."""

    def __init__(self, model_name: str, *, chat: bool, chunks: int, prompt_tokens: int) -> None:
        self.model_name = model_name
        self.chat = chat
        self.pieces = completion_pieces(chunks)
        self.prompt_tokens = prompt_tokens
        self.id = _completion_id("chatcmpl" if chat else "cmpl")
        self.created = int(time.time())

    def whole(self) -> dict[str, Any]:
        text = "".join(self.pieces)
        choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": "stop"}
        if self.chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        return {
            "id": self.id,
            "object": "chat.completion" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model_name,
            "choices": [choice],
            "usage": _usage(self.prompt_tokens, len(self.pieces)),
            "system_fingerprint": self.model_name,
        }

    def chunk(self, index: int) -> dict[str, Any]:
        last = index == len(self.pieces) - 1
        choice: dict[str, Any] = {
            "index": 0,
            "logprobs": None,
            "finish_reason": "stop" if last else None,
        }
        if self.chat:
            delta: dict[str, Any] = {"content": self.pieces[index]}
            if index == 0:
                delta = {"role": "assistant", **delta}
            choice["delta"] = delta
        else:
            choice["text"] = self.pieces[index]
        return {
            "id": self.id,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model_name,
            "system_fingerprint": self.model_name,
            "choices": [choice],
        }


def embeddings(model_name: str, inputs: Sequence[str]) -> dict[str, Any]:
    """Deterministic unit-ish vectors derived from each input's hash."""
    data = []
    for index, text in enumerate(inputs):
        seed = hashlib.sha256(text.encode("utf-8")).digest()
        vector = [
            (seed[i % len(seed)] - 127.5) / 127.5 * (1 - (i // len(seed)) * 0.01)
            for i in range(EMBEDDING_DIMENSIONS)
        ]
        data.append({"object": "embedding", "embedding": vector, "index": index})
    tokens = sum(len(text.split()) for text in inputs)
    return {
        "object": "list",
        "data": data,
        "model": model_name,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def count_prompt_tokens(body: dict[str, Any]) -> int:
    """A rough word count of the prompt, for a plausible `usage` block."""
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return len(prompt.split())
    total = 0
    for message in body.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            total += len(content.split())
    return total
