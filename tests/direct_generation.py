"""A client that talks to LM Studio (the emulator) directly, never to lmkeeperd (L19, L20).

lmkeeperd sees such a generation only through LM Studio's activity channel; the
end-to-end tests of L19, L20 and L25 start one on its own thread and join it.
"""

from __future__ import annotations

import threading

import httpx

from lmkeeperd.emulator import Emulator

CHAT = "/v1/chat/completions"


class DirectGeneration:
    """One streamed chat request straight to the emulator, on its own thread."""

    def __init__(self, emulator: Emulator, model: str, timeout: float = 120) -> None:
        self._url = emulator.url + CHAT
        self._model = model
        self._timeout = timeout
        self.chunks = 0
        self.done = False  # saw [DONE]
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="direct-generation", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        body = {"model": self._model, "messages": [{"role": "user", "content": "hi"}]}
        try:
            with (
                httpx.Client(timeout=self._timeout, trust_env=False) as http,
                http.stream("POST", self._url, json={**body, "stream": True}) as answer,
            ):
                for line in answer.iter_lines():
                    if line == "data: [DONE]":
                        self.done = True
                    elif line.startswith("data: "):
                        self.chunks += 1
        except BaseException as e:  # reported by join()
            self.error = e

    def join(self, timeout: float = 120) -> None:
        """Wait for the generation to end; its thread's error fails the test here."""
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the direct generation did not end"
        if self.error is not None:
            raise AssertionError(f"the direct generation failed: {self.error!r}") from self.error
