"""Token counting and token text for the emulator.

Prompt length of text is approximated without a tokenizer: every word counts ceil(len / 4) tokens
(so common words are one token and long ones split like BPE word pieces), every punctuation mark one
token. Chat messages add 4 tokens each for the template and 2 for the assistant header that primes
the reply; a final message continued open-ended (`continue_final_message`) takes those 2 header
tokens instead of its 4, so a continuation counts exactly its original's prompt plus what was
generated. A prompt given as token ids is counted exactly. Generated text is one short word per
token, so a client that counts stream chunks counts tokens.
"""
from __future__ import annotations

import re

_PIECES = re.compile(r"\w+|[^\w\s]")
_WORDS = ("the", "of", "and", "to", "in", "a", "is", "that", "for", "it", "as", "with", "on",
          "be", "by", "this", "are", "or", "from", "at")
_WORD_INDEX = {word: i for i, word in enumerate(_WORDS)}
CHAT_TOKENS_PER_MESSAGE = 4
CHAT_TOKENS_PRIMING = 2


def count_text_tokens(text: str) -> int:
    return sum(-(-len(piece) // 4) for piece in _PIECES.findall(text))


def count_chat_tokens(closed: list[str], open_content: str | None) -> int:
    """Tokens of a chat rendered from the contents of its `closed` messages and an open-ended last
    one: the generation prompt (""), a continued final message, or none (None: no generation prompt)."""
    tokens = sum(count_text_tokens(c) + CHAT_TOKENS_PER_MESSAGE for c in closed)
    if open_content is None:
        return tokens
    return tokens + CHAT_TOKENS_PRIMING + count_text_tokens(open_content)


def token_text(index: int) -> str:
    """The text of the `index`-th generated token."""
    return " " + _WORDS[index % len(_WORDS)]


def generated_text(tokens: int, first: int = 0) -> str:
    """The text of `tokens` generated tokens from the `first`-th on: a continuation picks up where
    its original stopped, so an interrupted and resumed request returns what an uninterrupted one
    would (and a continuation of a continuation still ends in generated text from its start)."""
    return "".join(token_text(i) for i in range(first, first + tokens))


def split_generated(text: str) -> tuple[str, int]:
    """(root, g) with `text == root + generated_text(g)` and g as large as possible: the prompt
    of a continuation is its original's plus what the emulator had generated, and the root is
    what both share. Walks back over the trailing words while each precedes the next in the
    generated sequence, so a prompt that does not end in generated words costs one look."""
    pieces = text.split(" ")
    walked = found = 0
    following = None  # index in _WORDS of the word after the current one
    for piece in reversed(pieces[1:]):  # the first piece has no space before it
        i = _WORD_INDEX.get(piece)
        if i is None or (following is not None and (i + 1) % len(_WORDS) != following):
            break
        walked += 1
        if i == 0:
            found = walked
        following = i
    return " ".join(pieces[:len(pieces) - found]), found
