"""The OpenAI wire format as vLLM's server speaks it: request validation and response shapes.

Kept free of aiohttp and of the engine so shapes can be read (and checked) in one place.
"""
from __future__ import annotations

import hashlib
import json
import time
import uuid
from dataclasses import dataclass

from sagesched.emulator.text import count_chat_tokens, count_text_tokens, split_generated

# vLLM's own check (a request validator) when both are given; transformers' chat template raises
# the second when `add_generation_prompt` is left at its default
BOTH_PROMPT_FLAGS = "Cannot set both `continue_final_message` and `add_generation_prompt` to True."
CONTINUE_WITH_DEFAULT_PROMPT = (
    "continue_final_message and add_generation_prompt are not compatible. Use continue_final_message "
    "when you want the model to continue the final message, and add_generation_prompt when you want "
    "to add a header that will prompt it to start a new assistant message instead.")


class APIError(Exception):
    """An error the server answers with OpenAI's {"error": {...}} body."""

    def __init__(self, status: int, message: str, type_: str = "BadRequestError", param: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.status}}


@dataclass(frozen=True)
class ParsedRequest:
    """What the emulator needs from a completions or chat request."""

    chat: bool
    model: str
    prompt_tokens: int
    cache_key: str  # prefix-cache identity: a continuation shares its original's
    continued: int  # generated tokens its prompt ends with (> 0: a continuation)
    max_tokens: int | None
    min_tokens: int
    ignore_eos: bool
    priority: int
    stream: bool
    include_usage: bool

    @property
    def previously_computed(self) -> int:
        """Prompt tokens an earlier run had computed: a continuation's original computed all of it
        but the last token, which it would have computed at its next step anyway."""
        return self.prompt_tokens - 1 if self.continued else 0


@dataclass(frozen=True)
class _Prompt:
    tokens: int
    cache_key: str
    continued: int = 0


def _cache_key(*root: object) -> str:
    """A stable hash of what a request's prompt starts with (its root): equal roots, equal keys."""
    return hashlib.blake2b(json.dumps(root, separators=(",", ":")).encode(), digest_size=16).hexdigest()


def _bool_field(body: dict, name: str, default: bool) -> bool:
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise APIError(400, f"{name} must be a boolean", param=name)
    return value


def _int_field(body: dict, name: str, default: int | None, minimum: int) -> int | None:
    value = body.get(name, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise APIError(400, f"{name} must be an integer", param=name)
    if value < minimum:
        raise APIError(400, f"{name} must be at least {minimum}, got {value}.", param=name)
    return value


def _completion_prompt(prompt: object) -> _Prompt:
    """Completions `prompt`: text, token ids, or a one-element batch of either."""
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, str):
        tokens = count_text_tokens(prompt)
        if tokens == 0:  # vLLM's check for a tokenizer that adds no BOS
            raise APIError(400, "The decoder prompt cannot be empty", param="prompt")
        root, continued = split_generated(prompt)
        return _Prompt(tokens, _cache_key("text", root), continued)
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        return _Prompt(len(prompt), _cache_key("ids", prompt))
    raise APIError(400, "prompt must be a string, a list of token ids, or a one-element list of either"
                   " (the emulator does not batch prompts)", param="prompt")


def _message_text(message: object) -> str:
    if not isinstance(message, dict) or "role" not in message:
        raise APIError(400, "each message must be an object with a role", param="messages")
    content = message.get("content") or ""
    if isinstance(content, list):  # content parts: count the text ones
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    if not isinstance(content, str):
        raise APIError(400, "message content must be a string or a list of parts", param="messages")
    return content


def _prompt_flags(body: dict) -> tuple[bool, bool]:
    """(continue_final_message, add_generation_prompt): the final message is continued open-ended,
    or a new reply is primed after it; never both, as vLLM refuses."""
    continue_final = _bool_field(body, "continue_final_message", False)
    generation_prompt = _bool_field(body, "add_generation_prompt", True)
    if continue_final and generation_prompt:
        raise APIError(400, BOTH_PROMPT_FLAGS if "add_generation_prompt" in body else CONTINUE_WITH_DEFAULT_PROMPT)
    return continue_final, generation_prompt


def _chat_prompt(body: dict) -> _Prompt:
    """The rendered chat: closed messages, then an open one (the generation prompt, an empty
    assistant message, or the continued final message, whose generated tail is not its root)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "messages must be a non-empty list", param="messages")
    contents = [_message_text(m) for m in messages]  # validates each message before its role is read
    closed = [[m["role"], c] for m, c in zip(messages, contents)]
    continue_final, generation_prompt = _prompt_flags(body)
    if continue_final:
        open_content = closed.pop()[1]
    else:
        open_content = "" if generation_prompt else None
    tokens = count_chat_tokens([c for _, c in closed], open_content)
    root, continued = split_generated(open_content) if open_content else (open_content, 0)
    return _Prompt(tokens, _chat_key(closed, root), continued)


def _chat_key(closed: list[list[str]], root: str | None) -> str:
    """Keyed by the messages up to the first user message: every later turn of the conversation (and
    a continuation of any of them) starts with them, so they share one prefix-cache entry and a turn
    finds the previous turn's prompt and answer cached. Approximate: two chats that open alike and
    then differ are credited as if the longer continued the other. Without a closed user message
    (one being continued), by everything the prompt starts with."""
    first_user = next((i for i, (role, _) in enumerate(closed) if role == "user"), None)
    return _cache_key("chat", closed, root) if first_user is None else _cache_key("chat", closed[:first_user + 1])


def parse_request(body: object, chat: bool) -> ParsedRequest:
    """Validate a request body; raises APIError(400) as vLLM would for bad parameters."""
    if not isinstance(body, dict):
        raise APIError(400, "request body must be a JSON object")
    if not isinstance(body.get("model"), str):
        raise APIError(400, "model is required", param="model")
    if _int_field(body, "n", 1, 1) not in (None, 1):  # null is "not given", as in vLLM
        raise APIError(400, "the emulator supports n=1 only", param="n")
    prompt = _chat_prompt(body) if chat else _completion_prompt(body.get("prompt"))
    max_tokens = _int_field(body, "max_tokens", None, 1)
    if chat and body.get("max_completion_tokens") is not None:
        max_tokens = _int_field(body, "max_completion_tokens", None, 1)
    min_tokens = _int_field(body, "min_tokens", 0, 0) or 0
    if max_tokens is not None and min_tokens > max_tokens:
        raise APIError(400, f"min_tokens must be less than or equal to max_tokens={max_tokens}, got {min_tokens}.",
                       param="min_tokens")
    stream_options = body.get("stream_options") or {}
    return ParsedRequest(
        chat=chat, model=body["model"], prompt_tokens=prompt.tokens, cache_key=prompt.cache_key,
        continued=prompt.continued, max_tokens=max_tokens,
        min_tokens=min_tokens, ignore_eos=bool(body.get("ignore_eos", False)),
        priority=_int_field(body, "priority", 0, -(2**31)) or 0, stream=bool(body.get("stream", False)),
        include_usage=bool(isinstance(stream_options, dict) and stream_options.get("include_usage")),
    )


def check_context(req: ParsedRequest, max_model_len: int) -> None:
    """vLLM's context-window check, with its message."""
    requested = req.prompt_tokens + (req.max_tokens or 0)
    if req.prompt_tokens >= max_model_len or requested > max_model_len:
        raise APIError(
            400,
            f"This model's maximum context length is {max_model_len} tokens. However, you requested "
            f"{requested} tokens ({req.prompt_tokens} in the messages, {req.max_tokens or 0} in the "
            "completion). Please reduce the length of the messages or completion.",
            param="messages" if req.chat else "prompt",
        )


# --- responses -----------------------------------------------------------------------------------------
@dataclass
class ResponseShape:
    """Builds the bodies of one response; ids and timestamps are fixed per request."""

    chat: bool
    model: str
    id: str = ""
    created: int = 0

    def __post_init__(self) -> None:
        self.id = ("chatcmpl-" if self.chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())

    def _envelope(self, obj: str, choices: list[dict]) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model, "choices": choices}

    def chunk(self, text: str, finish_reason: str | None, first: bool = False) -> dict:
        if not self.chat:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
            return self._envelope("text_completion", [choice])
        delta = {"role": "assistant", "content": text} if first else {"content": text}
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return self._envelope("chat.completion.chunk", [choice])

    def usage_chunk(self, usage: dict) -> dict:
        body = self._envelope("chat.completion.chunk" if self.chat else "text_completion", [])
        body["usage"] = usage
        return body

    def full(self, text: str, finish_reason: str, usage: dict) -> dict:
        if self.chat:
            message = {"role": "assistant", "content": text}
            choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}
            body = self._envelope("chat.completion", [choice])
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
            body = self._envelope("text_completion", [choice])
        body["usage"] = usage
        return body


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def models_body(model: str, max_model_len: int, created: int) -> dict:
    card = {"id": model, "object": "model", "created": created, "owned_by": "vllm", "root": model,
            "parent": None, "max_model_len": max_model_len}
    return {"object": "list", "data": [card]}
