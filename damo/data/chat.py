"""A minimal client for OpenAI-compatible ``/v1/chat/completions`` servers (vLLM, llama.cpp, TGI,
Ollama, hosted APIs), shared by the QA augmenter and the preference-data rewriter. Standard library only."""
from __future__ import annotations

import json
import os
import urllib.error
import urllib.request


class ChatClient:
    def __init__(self, url: str, model: str = "default", timeout: float = 60.0, max_tokens: int = 256,
                 api_key: str | None = None) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"--url must be an http(s) address such as http://127.0.0.1:8000, got {url!r}")
        base = url.rstrip("/")
        self.endpoint = base if base.endswith("/chat/completions") else (
            base + ("/chat/completions" if base.endswith("/v1") else "/v1/chat/completions"))
        self.model, self.timeout, self.max_tokens = model, timeout, max_tokens
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")

    def complete(self, messages: list[dict], seed: int | None = None) -> str:
        """Greedy completion (temperature 0, plus ``seed`` when given); errors say what to check."""
        req_body = {"model": self.model, "messages": messages, "temperature": 0.0, "max_tokens": self.max_tokens}
        if seed is not None:
            req_body["seed"] = seed
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(self.endpoint, data=json.dumps(req_body).encode(), headers=headers,
                                     method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                reply = json.loads(r.read().decode("utf-8"))
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"{self.endpoint} answered HTTP {e.code}: {e.read()[:300]!r}; "
                               "check --url and --model") from None
        except urllib.error.URLError as e:
            raise RuntimeError(f"cannot reach {self.endpoint} ({e.reason}); is the server running?") from None
        try:
            return reply["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise RuntimeError(f"{self.endpoint} did not answer in the chat-completions format: "
                               f"{str(reply)[:300]}") from None
