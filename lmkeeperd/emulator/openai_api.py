"""The OpenAI-compatible endpoints (`/v1/*`): model list, completions with streaming, embeddings.

Streamed answers use chunked transfer encoding, so the connection stays
reusable after them.
"""

from __future__ import annotations

import json
from typing import Any

from lmkeeperd.emulator import payloads
from lmkeeperd.emulator.checks import is_number
from lmkeeperd.emulator.errors import InjectedLoadFailure, NoSuchModel
from lmkeeperd.emulator.http_base import HandlerBase, Request


class OpenAIEndpoints(HandlerBase):
    def _list_openai(self, request: Request) -> None:
        # LM Studio lists every downloaded model when JIT loading is on, else only loaded ones.
        listed = self.state.inference_ids(include_unloaded=request.settings.jit)
        data = [payloads.openai_model(model_id, model) for model_id, model in listed]
        self._reply(request, {"object": "list", "data": data})

    def _chat_completions(self, request: Request) -> None:
        self._complete(request, chat=True)

    def _completions(self, request: Request) -> None:
        self._complete(request, chat=False)

    def _ready_model(self, request: Request, body: dict[str, Any], kind: str) -> str | None:
        """The named model, JIT-loaded if need be; None after answering an error."""
        name = self._required_string(request, body, "model")
        if name is None:
            return None
        ttl = body.get("ttl")
        if ttl is not None and (not is_number(ttl) or ttl <= 0):
            self._error(
                request, 400, "'ttl' must be a positive number of seconds", "invalid_request"
            )
            return None
        try:
            model, request.instance = self.state.claim_for_inference(name)
        except NoSuchModel as exc:
            self._error(request, 404, str(exc), "invalid_request", "model_not_found")
            return None
        if (model.type == "embedding") != (kind == "embedding"):
            message = f"model '{name}' is a {model.type} model and cannot serve {kind} requests"
            self._error(request, 400, message, "invalid_request", "wrong_model_type")
            return None
        if request.instance is not None:
            return name
        if not request.settings.jit:
            message = (
                f"model '{name}' is not loaded, and just-in-time loading is off. "
                "Load it first (lms load, or POST /api/v1/models/load)."
            )
            self._error(request, 404, message, "invalid_request", "model_not_loaded")
            return None
        try:
            done = self.state.load(model.key, {}, generation=request.generation, jit=True, ttl=ttl)
            request.instance = done.instance_id
        except InjectedLoadFailure as exc:
            self._error(request, exc.status, str(exc), "server_error", "model_load_failed")
            return None
        return name

    def _complete(self, request: Request, *, chat: bool) -> None:
        body = self._object_body(request)
        if body is None:
            return
        field = "messages" if chat else "prompt"
        value = body.get(field)
        valid = isinstance(value, list) if chat else isinstance(value, str | list)
        if not valid:
            kind = "a list of messages" if chat else "a string"
            self._error(request, 400, f"'{field}' is required: {kind}", "invalid_request")
            return
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            self._error(request, 400, "'stream' must be a boolean", "invalid_request")
            return
        name = self._ready_model(request, body, "completion")
        if name is None:
            return
        completion = payloads.Completion(
            name,
            chat=chat,
            chunks=request.settings.stream_chunks,
            prompt_tokens=payloads.count_prompt_tokens(body),
        )
        # What the websocket channel reports for the instance (activity.py).
        with self.emulator._serving(name, "completion") as served:
            served.generating()
            if stream:
                self._stream(request, completion)
            else:
                self._reply(request, completion.whole())

    def _stream(self, request: Request, completion: payloads.Completion) -> None:
        self.state.record_status(request.entry, 200)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for index in range(len(completion.pieces)):
            if index:
                self.state.wait(request.settings.stream_interval, request.generation)
            event = json.dumps(completion.chunk(index))
            self._write_chunk(f"data: {event}\n\n".encode())
        self._write_chunk(b"data: [DONE]\n\n")
        self.state.record_done(request.entry)
        self.wfile.write(b"0\r\n\r\n")

    def _write_chunk(self, data: bytes) -> None:
        # wfile is unbuffered: each event leaves in its own write, nothing is held back.
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _embeddings(self, request: Request) -> None:
        body = self._object_body(request)
        if body is None:
            return
        inputs = body.get("input")
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, list) or not all(isinstance(i, str) for i in inputs):
            message = "'input' is required: a string or a list of strings"
            self._error(request, 400, message, "invalid_request")
            return
        name = self._ready_model(request, body, "embedding")
        if name is not None:
            with self.emulator._serving(name, "embedding"):
                self._reply(request, payloads.embeddings(name, inputs))
