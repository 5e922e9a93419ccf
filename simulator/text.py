"""Deterministic tokenizer and text generator.

One regex tokenizer counts both prompts and outputs, so usage numbers agree with the text the
simulator sends and with ``/tokenize``. Generated text is assembled from pieces that are each
exactly one token (``"Word"``, ``" word"``, ``","``, ``"."``), so re-tokenising the output gives
back the number of pieces.

Token ids work like a BPE vocabulary: each token carries the whitespace before it (``" world"``),
and a :class:`Vocabulary` remembers which string every id stands for, so ``/detokenize`` gives
back exactly what ``/tokenize`` was given.
"""

from __future__ import annotations

import hashlib
import random
import re
import zlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

TOKEN_RE = re.compile(r"\w+|[^\w\s]")
# The same tokens, each with the whitespace before it (and the last with any trailing
# whitespace), so that joining the matches gives back the text exactly.
_SPACED_RE = re.compile(r"\s*(?:\w+|[^\w\s])(?:\s+\Z)?")
WORD_RE = re.compile(r"\w+")
VOCAB_SIZE = 32000

_WORDS = (
    "the of and to in is that it was for on are as with his they at be this from have or by "
    "one had not but what all were when we there can an your which their said if do will each "
    "about how up out them then she many some so these would other into has more her two like "
    "him see time could no make than first been its who now people my made over did down only "
    "way find use may water long little very after words called just where most know get "
    "through back much before go good new write our used me man too any day same right look "
    "think also around another came come work three word must because does part even place well "
    "such here take why things help put years different away again off went old number great "
    "tell men say small every found still between name should home big give air line set own "
    "under read last never us left end along while might next sound below saw something thought "
    "both few those always looked show large often together asked house world going want school "
    "important until form food keep children feet land side without boy once animals life enough "
    "took sometimes four head above kind began almost live page got earth need far hand high "
    "year mother light parts country father let night following picture being study second eyes "
    "soon times story boys since white days ever paper hard near sentence better best across "
    "during today others however sure means knew tried river model token server request stream "
    "engine batch cache memory latency gateway answer question simple system data value result"
).split()

# Pre-built pieces: a capitalised word opens a sentence, the rest follow a space.
_LEAD = tuple(w.capitalize() for w in _WORDS)
_FOLLOW = tuple(" " + w for w in _WORDS)


def tokenize(text: str) -> list[str]:
    """Split text into tokens: runs of word characters, or single punctuation characters."""
    return TOKEN_RE.findall(text)


def count_tokens(text: str) -> int:
    """Number of tokens in ``text`` (same rule as :func:`tokenize`)."""
    return len(TOKEN_RE.findall(text))  # faster than counting finditer's match objects


class Vocabulary:
    """A two-way map between token strings and ids in ``range(size)``.

    A token's id is a CRC of its string folded into the vocabulary size, so the same token gets
    the same id in every simulator process; a collision moves the later token to the next free
    id, which keeps ids invertible. The generator's own pieces are registered up front so that
    ids of generated text decode without having been seen. Once every id is taken, new tokens
    get their plain CRC id and are no longer invertible: the map cannot grow without bound.
    """

    def __init__(self, size: int = VOCAB_SIZE) -> None:
        self.size = size
        self._ids: dict[str, int] = {}
        self._tokens: dict[int, str] = {}

    def id_of(self, token: str) -> int:
        known = self._ids.get(token)
        if known is not None:
            return known
        tid = zlib.crc32(token.encode()) % self.size
        if len(self._tokens) >= self.size:
            return tid
        while tid in self._tokens:
            tid = (tid + 1) % self.size
        self._ids[token] = tid
        self._tokens[tid] = token
        return tid

    def token_of(self, tid: int) -> str:
        """The string behind ``tid``; an id never handed out decodes to a filler word, as any
        id of a real vocabulary decodes to something."""
        token = self._tokens.get(tid)
        return token if token is not None else _FOLLOW[tid % len(_FOLLOW)]


VOCAB = Vocabulary()
for _piece in (*_LEAD, *_FOLLOW, ",", ".", " ,", " ."):
    VOCAB.id_of(_piece)


def token_ids(text: str) -> list[int]:
    """Token ids of ``text``, one per token of :func:`tokenize`; :func:`detokenize` inverts it."""
    return [VOCAB.id_of(t) for t in _SPACED_RE.findall(text)]


def detokenize(ids: list[int]) -> str:
    """The text behind token ids (ids must lie in ``range(VOCAB_SIZE)``)."""
    return "".join(VOCAB.token_of(t) for t in ids)


def words(text: str) -> set[str]:
    """The distinct lower-cased words of ``text``, for overlap scores."""
    return {w.lower() for w in WORD_RE.findall(text)}


def _content_text(content: Any) -> str:
    """Text of a message's content: a string, or the text parts of a list of content parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for part in content:
        if isinstance(part, dict) and isinstance(part.get("text"), str):
            parts.append(part["text"])
    return "".join(parts)


def render_chat(messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> str:
    """A ChatML-like rendering of the messages, the prompt a chat model would actually see."""
    out = []
    for m in messages:
        role, content = m.get("role", "user"), _content_text(m.get("content"))
        out.append(f"<|im_start|>{role}\n{content}<|im_end|>\n")
    if add_generation_prompt:
        out.append("<|im_start|>assistant\n")
    return "".join(out)


def _rng(prompt: str, seed: int, index: int) -> random.Random:
    digest = hashlib.blake2b(f"{seed}\x00{index}\x00{prompt}".encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "little"))


def natural_length(prompt: str, seed: int, index: int) -> int:
    """Where this answer would hit end-of-sequence: 16-96 tokens, from the same hash."""
    return _rng(prompt, seed, index).randint(16, 96)


@lru_cache(maxsize=1024)
def generate_pieces(prompt: str, seed: int, index: int, length: int) -> tuple[str, ...]:
    """``length`` output tokens for (prompt, seed, choice index), ending with a full stop.

    Callers cut a natural-length answer for ``max_tokens``, so a shorter answer is a prefix of
    the longer one. Cached because benchmarks repeat prompts.
    """
    rng = _rng(prompt, seed, index)
    rng.randint(16, 96)  # the natural length draw, kept so the text does not depend on it
    pieces: list[str] = []
    start_sentence = True
    since_comma = 0
    randrange = rng.randrange
    nwords = len(_WORDS)
    while len(pieces) < length:
        left = length - len(pieces)
        if start_sentence:
            pieces.append(_LEAD[randrange(nwords)])
            start_sentence = False
            since_comma = 1
            continue
        roll = randrange(100)
        if left == 1 or (roll < 9 and since_comma >= 4):
            pieces.append(".")
            start_sentence = True
        elif roll < 16 and since_comma >= 3 and left > 2:
            pieces.append(",")
            since_comma = 0
        else:
            pieces.append(_FOLLOW[randrange(nwords)])
            since_comma += 1
    return tuple(pieces)


@dataclass(frozen=True)
class Completion:
    """One choice's output: the token pieces as streamed, and why it ended.

    ``pieces`` hold the text of each generated token as it is sent (clipped before a stop
    string, so later pieces may be empty); ``len(pieces)`` is the completion token count.
    """

    pieces: tuple[str, ...]
    finish_reason: str
    stop_reason: str | None

    @property
    def text(self) -> str:
        return "".join(self.pieces)


def complete(prompt: str, *, seed: int, index: int, max_tokens: int, stop: list[str],
             min_tokens: int = 0, ignore_eos: bool = False) -> Completion:
    """Generate one choice, applying ``max_tokens`` and ``stop`` the way vLLM does.

    ``min_tokens`` and ``ignore_eos`` (vLLM sampling extras) push the natural end out;
    ``ignore_eos`` makes every answer exactly ``max_tokens`` long, which benchmarks want.

    vLLM checks stop strings on the detokenised text after each token: the token that completes
    the stop string is still generated (and counted), the text is cut before the stop string and
    the stop string is reported as ``stop_reason``.
    """
    length = natural_length(prompt, seed, index)
    length = max(length, max_tokens if ignore_eos else min(min_tokens, max_tokens))
    pieces = generate_pieces(prompt, seed, index, length)[:max_tokens]
    finish = "length" if ignore_eos or length > max_tokens else "stop"
    if stop:
        cut = _first_stop(pieces, stop)
        if cut is not None:
            return _truncate(pieces, *cut)
    return Completion(pieces, finish, None)


def _first_stop(pieces: tuple[str, ...], stop: list[str]) -> tuple[int, int, str] | None:
    """(start char, end char, stop string) of the earliest-ending stop occurrence, if any."""
    text = "".join(pieces)
    best: tuple[int, int, str] | None = None
    for s in stop:
        if not s:
            continue
        pos = text.find(s)
        if pos >= 0 and (best is None or pos + len(s) < best[1]):
            best = (pos, pos + len(s), s)
    return best


def _truncate(pieces: tuple[str, ...], start: int, end: int, stop: str) -> Completion:
    out: list[str] = []
    offset = 0
    for piece in pieces:
        piece_end = offset + len(piece)
        out.append(piece[: max(0, start - offset)] if piece_end > start else piece)
        offset = piece_end
        if offset >= end:
            break
    return Completion(tuple(out), "stop", stop)
