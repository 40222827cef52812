"""Token counting and token text for the emulator.

Prompt length of text is approximated without a tokenizer: every word counts ceil(len / 4) tokens
(so common words are one token and long ones split like BPE word pieces), every punctuation mark one
token. Chat messages add 4 tokens each for the template and 2 for the assistant header. A prompt
given as token ids is counted exactly. Generated text is one short word per token, so a client that
counts stream chunks counts tokens.
"""
from __future__ import annotations

import re

_PIECES = re.compile(r"\w+|[^\w\s]")
_WORDS = ("the", "of", "and", "to", "in", "a", "is", "that", "for", "it", "as", "with", "on",
          "be", "by", "this", "are", "or", "from", "at")
CHAT_TOKENS_PER_MESSAGE = 4
CHAT_TOKENS_PRIMING = 2


def count_text_tokens(text: str) -> int:
    return sum(-(-len(piece) // 4) for piece in _PIECES.findall(text))


def count_chat_tokens(contents: list[str]) -> int:
    return sum(count_text_tokens(c) + CHAT_TOKENS_PER_MESSAGE for c in contents) + CHAT_TOKENS_PRIMING


def token_text(index: int) -> str:
    """The text of the `index`-th generated token."""
    return " " + _WORDS[index % len(_WORDS)]
