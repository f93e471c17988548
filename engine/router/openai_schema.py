"""The OpenAI-compatible request bodies the endpoint accepts, validated.

Fields OpenAI defines that Strata cannot honour (``n`` > 1, penalties, log-probabilities,
tools and function calls, structured ``response_format``, ``logit_bias``, ``best_of``,
``echo``, ``suffix``, several prompts in one completion) are refused with a 400 naming
them rather than silently ignored; other unknown fields are ignored, as OpenAI's
clients send extras. Extensions: ``top_k``, ``ignore_eos``, ``stop_token_ids``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from engine.errors import EngineError

DEFAULT_MAX_TOKENS = 512


class Unsupported(EngineError, ValueError):
    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: str
    text: str = ""


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: str
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        for part in self.content:
            if part.type != "text":
                raise Unsupported(
                    "messages", f"content parts of type {part.type!r} are not supported"
                )
        return "".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class Sampling(BaseModel):
    """Fields shared by chat and completions requests."""

    model_config = ConfigDict(extra="ignore")
    model: str
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0)
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] = Field(default_factory=list)
    ignore_eos: bool = False
    # vLLM's: KV is reused only between requests with the same salt (tenant isolation)
    cache_salt: str | None = Field(default=None, min_length=1, max_length=256)
    n: int = 1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: bool | int | None = None
    # OpenAI fields Strata refuses when set (see ``check_supported``)
    tools: object = None
    tool_choice: object = None
    functions: object = None
    function_call: object = None
    parallel_tool_calls: object = None
    response_format: object = None
    logit_bias: object = None
    top_logprobs: object = None
    best_of: object = None
    modalities: object = None
    audio: object = None
    prediction: object = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else value or []
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("up to 4 non-empty stop strings")
        return value

    def check_supported(self) -> None:
        if self.n != 1:
            raise Unsupported("n", "n must be 1 (one choice per request)")
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name):
                raise Unsupported(name, f"{name} is not supported; leave it at 0")
        if self.logprobs:
            raise Unsupported("logprobs", "logprobs are not supported")
        for name in _REFUSED:
            value = getattr(self, name)
            if value is not None and value not in _HARMLESS.get(name, ()):
                raise Unsupported(name, f"{name} is not supported by this server; leave it out")

    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def wants_usage_chunk(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


_REFUSED = (
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "parallel_tool_calls",
    "response_format",
    "logit_bias",
    "top_logprobs",
    "best_of",
    "modalities",
    "audio",
    "prediction",
)
# values that ask for nothing beyond what Strata does anyway
_HARMLESS: dict[str, tuple[object, ...]] = {
    "tool_choice": ("none",),
    "function_call": ("none",),
    "parallel_tool_calls": (False,),
    "response_format": ({"type": "text"},),
    "logit_bias": ({},),
    "top_logprobs": (0,),
    "best_of": (1,),
    "modalities": (["text"],),
}


class ChatRequest(Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)

    def limit(self) -> int:
        return self.max_completion_tokens or self.max_tokens or DEFAULT_MAX_TOKENS


class CompletionRequest(Sampling):
    prompt: str | list[int] | list[str] | list[list[int]]
    echo: bool = False
    suffix: str | None = None

    def check_supported(self) -> None:
        super().check_supported()
        prompts = self.prompt if isinstance(self.prompt, list) else [self.prompt]
        if prompts and not isinstance(prompts[0], int) and len(prompts) != 1:
            raise Unsupported(
                "prompt",
                f"{len(prompts)} prompts in one request; send one prompt (a string or a list"
                " of token ids) per request",
            )
        if self.echo:
            raise Unsupported("echo", "echo is not supported")
        if self.suffix:
            raise Unsupported("suffix", "suffix is not supported")

    def limit(self) -> int:
        return self.max_tokens or DEFAULT_MAX_TOKENS

    def single_prompt(self) -> str | list[int]:
        prompt: Any = self.prompt
        if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
            prompt = prompt[0]
        return prompt  # type: ignore[no-any-return]


class TokenizeRequest(BaseModel):
    """``POST /tokenize`` (as vLLM serves it): a prompt, or chat messages rendered with the
    model's chat template, to the token ids the engine would see."""

    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None

    def check_supported(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise Unsupported("prompt", "give either prompt or messages")
