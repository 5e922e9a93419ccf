"""A vLLM-like automatic prefix cache: block hashes in a bounded LRU.

vLLM v1 splits every token sequence into blocks of ``block_size`` tokens (16 by default) and
names each full block by a hash that chains on the previous block's hash, so a block's hash
stands for the whole prefix up to its end; a partial last block is never cached. A new prompt
reuses the KV of its longest run of leading blocks that are still cached and prefills only the
rest. The cache lives in the same GPU memory as the running sequences: blocks in use can't be
evicted, and what running sequences hold beyond cached blocks leaves less room for cached ones,
which are evicted least recently used first.

Only hashes are kept (there is no KV to keep). A text prompt is cut into blocks by one regex
pass that matches ``block_size`` tokens of :func:`simulator.text.tokenize` at a time, and a
block is hashed by its exact text (its tokens with the whitespace before each): the same
tokens as the per-token rule, in C rather than a Python loop per token, about 0.2 us a token.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Sequence
from functools import lru_cache

DEFAULT_BLOCK_SIZE = 16


def block_hashes(tokens: Sequence[Hashable], block_size: int,
                 parent: int | None = None) -> list[int]:
    """The chained hashes of the full blocks of ``tokens`` (a partial last block has none).

    ``parent`` is the hash of the block before the first one, to continue a chain.
    """
    toks = tokens if isinstance(tokens, tuple) else tuple(tokens)
    out = []
    for start in range(0, len(toks) - block_size + 1, block_size):
        parent = hash((parent, toks[start:start + block_size]))
        out.append(parent)
    return out


@lru_cache(maxsize=8)
def _block_re(block_size: int) -> re.Pattern[str]:
    # One match is block_size tokens of text.TOKEN_RE, each with the whitespace before it.
    # Possessive quantifiers keep a word from being split to make up a short last block, so
    # matches are exactly the full blocks, back to back from the start of the text.
    return re.compile(rf"(?:\s*+(?:\w++|[^\w\s])){{{block_size}}}")


def text_blocks(text: str, block_size: int,
                parent: int | None = None) -> tuple[list[int], int]:
    """The chained hashes of the full blocks of ``text`` and where the last one ends."""
    out = []
    end = 0
    for block in _block_re(block_size).findall(text):
        parent = hash((parent, block))
        out.append(parent)
        end += len(block)
    return out, end


class PromptBlocks:
    """One prompt's full-block hashes, and the chain continued through its answer.

    vLLM caches the full blocks of generated tokens too, so the next turn of a conversation,
    which resends the answer after the prompt, hits through the answer. That needs the prompt
    as text; a prompt given as token ids caches its own blocks only.
    """

    __slots__ = ("tokens", "hashes", "block_size", "_tail")

    def __init__(self, tokens: int, hashes: list[int], block_size: int,
                 tail: str | None) -> None:
        self.tokens, self.hashes, self.block_size, self._tail = tokens, hashes, block_size, tail

    @classmethod
    def from_text(cls, text: str, tokens: int, block_size: int) -> PromptBlocks:
        hashes, end = text_blocks(text, block_size)
        return cls(tokens, hashes, block_size, text[end:])

    @classmethod
    def from_ids(cls, ids: Sequence[int], block_size: int) -> PromptBlocks:
        return cls(len(ids), block_hashes(ids, block_size), block_size, None)

    def continued(self, generated: str) -> list[int]:
        """Hashes of the blocks after the prompt's own that ``generated`` text fills."""
        if self._tail is None or not generated:
            return []
        parent = self.hashes[-1] if self.hashes else None
        return text_blocks(self._tail + generated, self.block_size, parent)[0]


class PrefixCache:
    """Cached blocks (by hash) in one KV budget of ``capacity_blocks`` with running sequences.

    Like vLLM's block pool: a block that running sequences use is counted in ``_used`` (by how
    many of them) and is not evictable; when its last user is done it joins the tail of the
    ``_free`` LRU, whose head is evicted first. ``reserved`` counts the blocks running
    sequences hold outside the cache (uncached prompt tails, generated tokens): they take room
    from cached blocks too. Counters are in tokens, as vLLM's ``prefix_cache_*`` metrics are.
    """

    def __init__(self, capacity_blocks: int, block_size: int = DEFAULT_BLOCK_SIZE) -> None:
        if block_size <= 0:
            raise ValueError("block_size must be > 0")
        self.capacity_blocks = max(0, capacity_blocks)
        self.block_size = block_size
        self.reserved = 0
        self.queries = 0
        self.hits = 0
        self._free: OrderedDict[int, None] = OrderedDict()
        self._used: dict[int, int] = {}

    @property
    def cached_blocks(self) -> int:
        """Distinct blocks whose hashes are cached (in use or evictable)."""
        return len(self._free) + len(self._used)

    def __contains__(self, block_hash: int) -> bool:
        return block_hash in self._used or block_hash in self._free

    def match(self, hashes: Sequence[int]) -> int:
        """How many leading blocks of ``hashes`` are cached (stops at the first miss); the
        matched evictable blocks become the most recently used, the head last (it is the
        most shared part of a prefix)."""
        free, used = self._free, self._used
        count = 0
        for h in hashes:
            if h not in free and h not in used:
                break
            count += 1
        for h in reversed(hashes[:count]):
            if h in free:
                free.move_to_end(h)
        return count

    def lookup(self, hashes: Sequence[int], num_tokens: int) -> int:
        """Cached tokens a prompt of ``num_tokens`` tokens (whose full blocks are ``hashes``)
        may reuse, counted into ``queries`` and ``hits``.

        As in vLLM, the last prompt token is always computed (its logits give the first output
        token), so only blocks ending before it can hit: a fully cached prompt still prefills
        at least one token, and one that is an exact number of blocks recomputes its last block.
        """
        usable = max(0, num_tokens - 1) // self.block_size
        cached = self.match(hashes[:usable]) * self.block_size
        self.queries += num_tokens
        self.hits += cached
        return cached

    def acquire(self, hashes: Iterable[int]) -> None:
        """A running sequence uses these blocks: pin the cached ones, cache the new ones."""
        free, used = self._free, self._used
        for h in hashes:
            if h in used:
                used[h] += 1
            else:
                free.pop(h, None)
                used[h] = 1
        self._evict()

    def release(self, hashes: Sequence[int]) -> None:
        """The sequence that :meth:`acquire`-d ``hashes`` is done with them.

        Blocks are freed last block first, as vLLM frees them, so a prefix's tail is evicted
        before its head (a head without its tail still hits; a tail without its head cannot).
        """
        free, used = self._free, self._used
        for h in reversed(hashes):
            users = used.get(h)
            if users is None:
                continue
            if users > 1:
                used[h] = users - 1
            else:
                del used[h]
                free[h] = None
        self._evict()

    def insert(self, hashes: Sequence[int]) -> None:
        """Cache blocks no running sequence uses (the generated blocks of a finished
        sequence), last block first like :meth:`release`."""
        free, used = self._free, self._used
        for h in reversed(hashes):
            if h in free:
                free.move_to_end(h)
            elif h not in used:
                free[h] = None
        self._evict()

    def reserve(self, delta: int) -> None:
        """Running sequences now hold ``delta`` more (or fewer) blocks outside the cache."""
        self.reserved += delta
        self._evict()

    def _evict(self) -> None:
        free = self._free
        excess = len(free) + len(self._used) + self.reserved - self.capacity_blocks
        for _ in range(min(excess, len(free))):
            free.popitem(last=False)

    def as_dict(self) -> dict[str, int]:
        return {"block_size": self.block_size, "capacity_blocks": self.capacity_blocks,
                "cached_blocks": self.cached_blocks, "queries": self.queries,
                "hits": self.hits}
