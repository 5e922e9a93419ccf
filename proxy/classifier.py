"""Small-model routing: how hard is this request, and may the route's small model answer it?

`difficulty()` turns cheap features of the body into a score in [0, 1] (0: easy, fine for the
small model; 1: hard, keep it on the primary) through a weighted sum and a logistic function.
Every weight is a named constant below, with the reason for it, so that an operator can read
why a request went where it went. No model, no I/O: it runs on the hot path of the routes that
enable down-routing (a few tens of microseconds for a typical chat body; the text scanned for
keywords is capped so a huge body costs no more than a large one).

What is looked at, and what is not:
- The conversation's user and assistant text, not the system/developer prompt: apps send the
  same long system prompt with every question, and it says nothing about how hard this one is.
- Length (characters) and the number of user turns; code (fences, keywords, stack traces);
  maths (LaTeX, equations, digits with operators); words that ask for reasoning or analysis;
  words that ask for a light edit of given text (rewrite, translate, summarise), which make a
  long prompt *easier* than its length says; the output the app asks for (`max_tokens`),
  tools, and a `json_schema` response format.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

# --- weights (logit units; the score is sigmoid(BIAS + sum of weight * feature)) -------------
# Each feature is scaled to [0, 1] first, so a weight says how far that feature alone moves
# the logit when it is at its strongest: from the bias, a weight of +1.6 reaches 0.5.

# An empty chit-chat request: sigmoid(-1.6) ~ 0.17. Set so that the routes' default threshold
# (0.5) sits where accuracy peaks on the labelled set, leaning to the primary when unsure:
# a hard prompt sent to the small model costs a bad answer, an easy one kept on the primary
# only a missed saving.
BIAS = -1.6
# Long prompts carry more context to reason over; log-scaled, saturating at LENGTH_FULL_CHARS.
# Modest on its own: a long paste to summarise or translate is still easy work.
W_LENGTH = 1.6
# Many user turns: an ongoing working session (debugging, design) rather than a one-off lookup.
W_TURNS = 0.9
# Code is where small models fail most visibly (wrong APIs, broken syntax): fences or several
# code keywords count fully; a pasted stack trace is its own, stronger signal (debugging).
W_CODE = 2.0
W_TRACE = 1.4
# Maths beyond arithmetic (LaTeX, equations, proofs) is the other classic weak spot.
W_MATHS = 2.0
# Words asking for reasoning, analysis or design ("prove", "step by step", "trade-offs", ...):
# the strongest single signal in short prompts, which are otherwise scored as easy.
W_REASONING = 2.7
# Words asking for a light transformation of text given in the prompt (rewrite, translate,
# summarise, fix the grammar): negative, so that length alone does not send these to the
# primary. Weaker than the reasoning words, which win when both appear.
W_LIGHT_EDIT = -1.3
# A large requested output (long-form writing, full implementations); saturates at
# MAX_TOKENS_FULL. Nothing when absent: most apps do not set it.
W_MAX_TOKENS = 1.0
# Tools mean an agent loop: choosing a tool and its arguments well is harder than chatting.
W_TOOLS = 1.2
# A strict JSON schema to fill: small models break schemas more often.
W_JSON_SCHEMA = 0.8

# --- scales --------------------------------------------------------------------------------
LENGTH_FLOOR_CHARS = 80  # shorter than this counts as no length at all
LENGTH_FULL_CHARS = 4000  # a page of text: the length feature saturates here
TURNS_FULL = 6  # user turns at which the turns feature saturates
MAX_TOKENS_FLOOR = 500  # a max_tokens below this says nothing (apps set 256/512 by habit)
MAX_TOKENS_FULL = 4000
# Keyword features scan at most the latest SCAN_TAIL_CHARS characters of the conversation
# (the question is at the end), plus the first SCAN_HEAD_CHARS of the message cut there (where
# "Summarise this:" or "Why does this crash?" sits above a long paste). It bounds the cost:
# each substring check runs at ~0.6 ns per character, and there are ~60 of them.
SCAN_TAIL_CHARS = 1500
SCAN_HEAD_CHARS = 500
# Hits at which each keyword feature saturates: one strong reasoning word is a request for
# reasoning; code and maths take a few distinct signs, since one stray symbol proves little.
CODE_HITS_FULL = 3
MATHS_HITS_FULL = 2
REASONING_HITS_FULL = 1  # strong words; a weak one counts half

GENERATIVE_ENDPOINTS = frozenset({"chat/completions", "completions", "responses"})

# Keyword features work on a set of lower-case words (split on anything but letters, digits
# and `+#_'`) and on substring checks for phrases and symbols: all C-level set and string
# operations. Regular expressions over the text were measured first and cost ~0.5 us per
# character (word alternations defeat the regex engine's prefix scan), ten times too slow.
_SEPARATORS = str.maketrans({c: " " for c in "!\"$%&()*,-./:;<=>?@[\\]^`{|}~\t\n\r"})



def _phrases(*phrases: str) -> tuple[tuple[str, str], ...]:
    """(first word, phrase) pairs for _phrases_count()."""
    return tuple((p.translate(_SEPARATORS).split()[0], p) for p in phrases)


_CODE_FENCE = "```"
# Operators and punctuation of programming languages, rare in prose; each distinct one present
# counts once.
_CODE_SYMBOLS = ("=>", "->", "::", "==", "!=", "&&", "||", ";\n", "{\n", "}\n", "()", "</",
                 "self.", "this.", "[i]")
# The vocabulary of programming: languages, tools, concepts.
_CODE_WORDS = frozenset("""
python javascript typescript rust golang java c++ c# kotlin swift haskell scala ruby php sql
postgres postgresql mysql sqlite redis kafka kubernetes k8s kubectl docker react django flask
node nodejs asyncio async await thread threads threading mutex deadlock segfault goroutine
goroutines compiler compile compiles borrow regex regexp websocket websockets api apis
endpoint endpoints schema database queries query index indexes cache caching latency runtime
pointer pointers recursion recursive hashmap heap struct enum interface bytecode jvm gc orm
serializer microservices monolith sharding shard replica replication transaction
transactions lock locks locking concurrency parser tokenizer refactor refactoring
def elif lambda null nullptr println printf sudo stdout stderr #include
""".split())
# An imperative to produce code ("write a function", "implement a parser") counts as a fence.
_CODE_VERBS = frozenset("write implement build code create".split())
_CODE_NOUNS = frozenset("""
function functions class method script program server client service query parser tokenizer
algorithm library module worker pool cache queue regex regexp cli api tests
""".split()) | frozenset({"regular expression"})
_TRACE_MARKS = ("Traceback (most recent call last)", 'File "', "Error:", "Exception",
                "panic:", "Segmentation fault", "segmentation fault", "core dumped",
                "\n    at ", "\n\tat ", "error[E", "FATAL", "SIGSEGV", "exit code",
                "CrashLoopBackOff", "EXPLAIN", "Stack trace", "stack trace")
_MATHS_MARKS = ("^2", "^3", "^n", "^{", "x^", "y'", "f(x)", "dx", " = 0", "sin(", "cos(",
                "log(", "mod ", "n!")
_LATEX_MARKS = ("\\frac", "\\int", "\\sum", "\\prod", "\\sqrt", "\\lim", "\\mathbb",
                "\\forall", "\\infty", "\\partial", "\\binom")  # checked when "\\" is there
_MATHS_SYMBOLS = ("≤", "≥", "∑", "∫", "√", "∞", "∀", "∃")  # checked when the text is not ASCII
_MATHS_WORDS = frozenset("""
integral integrals derivative derivatives eigenvalue eigenvalues eigenvector matrix matrices
theorem lemma corollary modulo prime primes polynomial probability variance converge
converges convergence induction inequality equation equations vector determinant det limit
asymptotic combinatorics combinatorial permutations permutation binomial irrational
differential cyclic group groups topology manifold bayes bayesian distribution
""".split())
# Asking for reasoning: strong words and phrases ask for it outright (one is enough) ...
_STRONG_WORDS = frozenset("""
prove proof proofs derive derivation analyse analyze analysis analysing analyzing critique
critically design designing architect architecture justify rigorous rigorously counterexample
diagnose implications consequences optimise optimize optimising optimizing correctness
invariant invariants concurrency scales scalable scalability evaluate assess algorithm
algorithms complexity strategy tradeoffs
""".split())
_STRONG_PHRASES = _phrases(
    "show that", "step by step", "step-by-step", "trade-off", "pros and cons", "in depth",
    "in detail", "root cause", "second-order", "race condition", "how would you",
    "what would happen", "edge cases", "think carefully", "thoroughly", "counter-example",
)
# ... weak words often do, often not ("why is the sky blue?"): half a strong word each.
_WEAK_WORDS = frozenset("""
why compare comparison contrast explain reason reasoning plan recommend recommendation
estimate investigate debug debugging implement implementation consider considering
generalise generalize assumptions
""".split())
_WEAK_PHRASES = _phrases("should i ", "should we ", "which is better", "best way",
                         "what could cause", "how could")
# A light edit of text given in the prompt: rewrite, translate, summarise, proofread.
_LIGHT_WORDS = frozenset("""
rewrite rephrase paraphrase reword translate translation summarize summarise summary tl;dr
tldr shorten proofread capitalize capitalise extract reformat
""".split())
_LIGHT_PHRASES = _phrases(
    "fix the grammar", "fix grammar", "fix the typos", "fix any typos", "fix the spelling",
    "correct the spelling", "make it more", "make this more", "make this shorter",
    "make it shorter", "bullet list", "bullet points", "format this as", "convert this to",
    "list the", "in one word",
)


@dataclass(frozen=True)
class Decision:
    choice: str  # "small" | "primary" | "forced"
    score: float | None  # None: not scored (forced, or an endpoint that does not generate)


@dataclass(frozen=True, slots=True)
class Features:
    """Each scaled to [0, 1] (LIGHT_EDIT too; its weight is negative)."""

    length: float
    turns: float
    code: float
    trace: float
    maths: float
    reasoning: float
    light_edit: float
    max_tokens: float
    tools: float
    json_schema: float


WEIGHTS = Features(
    length=W_LENGTH, turns=W_TURNS, code=W_CODE, trace=W_TRACE, maths=W_MATHS,
    reasoning=W_REASONING, light_edit=W_LIGHT_EDIT, max_tokens=W_MAX_TOKENS, tools=W_TOOLS,
    json_schema=W_JSON_SCHEMA,
)
FEATURE_NAMES = tuple(f.name for f in fields(Features))


def decide(body: dict[str, Any], *, endpoint: str, threshold: float,
           forced_primary: bool) -> Decision:
    """Where this request goes: "forced" when the app sent `x-sluice-no-downroute: 1`, "small"
    when its difficulty is below the route's threshold, else "primary". Requests to endpoints
    that do not generate text (embeddings, rerank, ...) always stay on the primary: a small
    model's vectors or scores are not interchangeable with the primary's."""
    if forced_primary:
        return Decision("forced", None)
    if endpoint not in GENERATIVE_ENDPOINTS:
        return Decision("primary", None)
    score = difficulty(body, endpoint=endpoint)
    return Decision("small" if score < threshold else "primary", score)


def difficulty(body: dict[str, Any], *, endpoint: str) -> float:
    """0 (easy: fine for a small model) to 1 (hard), from cheap features of the body."""
    return score_of(features_extract(body, endpoint=endpoint))


def score_of(features: Features, weights: Features = WEIGHTS, bias: float = BIAS) -> float:
    logit = bias
    for name in FEATURE_NAMES:
        logit += getattr(weights, name) * getattr(features, name)
    return 1.0 / (1.0 + math.exp(-logit))


def features_extract(body: dict[str, Any], *, endpoint: str) -> Features:
    """The features of a request body, each in [0, 1]."""
    texts, user_turns = _conversation(body, endpoint)
    chars = sum(len(t) for t in texts)
    scan = _window(texts)
    low = scan.lower()
    words = set(low.translate(_SEPARATORS).split())
    code_task = bool(words & _CODE_VERBS) and (
        bool(words & _CODE_NOUNS) or "regular expression" in low)
    code_hits = (sum(1 for mark in _CODE_SYMBOLS if mark in scan) + len(words & _CODE_WORDS)
                 + CODE_HITS_FULL * (_CODE_FENCE in scan or code_task))
    maths_hits = sum(1 for mark in _MATHS_MARKS if mark in low) + len(words & _MATHS_WORDS)
    if "\\" in scan:
        maths_hits += sum(1 for mark in _LATEX_MARKS if mark in scan)
    if not scan.isascii():
        maths_hits += sum(1 for mark in _MATHS_SYMBOLS if mark in scan)
    strong = len(words & _STRONG_WORDS) + _phrases_count(_STRONG_PHRASES, words, low)
    weak = len(words & _WEAK_WORDS) + _phrases_count(_WEAK_PHRASES, words, low)
    light = bool(words & _LIGHT_WORDS) or _phrases_count(_LIGHT_PHRASES, words, low) > 0
    return Features(
        length=_log_scale(chars, LENGTH_FLOOR_CHARS, LENGTH_FULL_CHARS),
        turns=min(1.0, max(0, user_turns - 1) / (TURNS_FULL - 1)),
        code=min(1.0, code_hits / CODE_HITS_FULL),
        trace=1.0 if any(mark in scan for mark in _TRACE_MARKS) else 0.0,
        maths=min(1.0, maths_hits / MATHS_HITS_FULL),
        reasoning=min(1.0, (strong + 0.5 * weak) / REASONING_HITS_FULL),
        light_edit=1.0 if light else 0.0,
        max_tokens=_max_tokens_feature(body),
        tools=1.0 if body.get("tools") or body.get("functions") else 0.0,
        json_schema=1.0 if _wants_json_schema(body) else 0.0,
    )


def _phrases_count(phrases: tuple[tuple[str, str], ...], words: set[str], low: str) -> int:
    """Phrases present in `low`; a phrase is only searched for when its first word is among
    the text's words (a set lookup), which skips most of the substring searches."""
    return sum(1 for first, phrase in phrases if first in words and phrase in low)


def _conversation(body: dict[str, Any], endpoint: str) -> tuple[list[str], int]:
    """(the text of user and assistant turns, oldest first; the number of user turns)."""
    if endpoint == "completions":
        prompt = body.get("prompt")
        if isinstance(prompt, list):  # a batch of prompts, or token ids (no text to read)
            return [p for p in prompt if isinstance(p, str)], 1
        return ([prompt] if isinstance(prompt, str) else []), 1
    items = body.get("messages")
    if items is None and endpoint == "responses":
        items = body.get("input")
        if isinstance(items, str):
            return [items], 1
    if not isinstance(items, list):
        return [], 0
    texts: list[str] = []
    user_turns = 0
    for item in items:
        if not isinstance(item, dict):
            continue
        role = item.get("role")
        if role in ("system", "developer"):
            continue
        if role == "user":
            user_turns += 1
        text = _content_text(item.get("content"))
        if text:
            texts.append(text)
    return texts, user_turns


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: only text parts count
        return "\n".join(p["text"] for p in content
                         if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _window(texts: list[str]) -> str:
    """The latest SCAN_TAIL_CHARS characters of the conversation, joined by newlines, led by
    the head of the message that the cut falls in."""
    out: list[str] = []
    room = SCAN_TAIL_CHARS
    for text in reversed(texts):
        if len(text) >= room:
            head = text[:SCAN_HEAD_CHARS] if len(text) - room > SCAN_HEAD_CHARS else text[:-room]
            out.append(head + "\n" + text[len(text) - room:])
            break
        out.append(text)
        room -= len(text) + 1
    return "\n".join(reversed(out))


def _log_scale(value: float, floor: float, full: float) -> float:
    if value <= floor:
        return 0.0
    return min(1.0, math.log(value / floor) / math.log(full / floor))


def _max_tokens_feature(body: dict[str, Any]) -> float:
    most = body.get("max_completion_tokens") or body.get("max_tokens") or body.get(
        "max_output_tokens")
    if not isinstance(most, int) or isinstance(most, bool):
        return 0.0
    return _log_scale(most, MAX_TOKENS_FLOOR, MAX_TOKENS_FULL)


def _wants_json_schema(body: dict[str, Any]) -> bool:
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        return True
    text = body.get("text")  # the Responses API puts it under text.format
    return isinstance(text, dict) and isinstance(text.get("format"), dict) and \
        text["format"].get("type") == "json_schema"


# --- evaluation on labelled examples (the classifier_eval command and the tests) -------------
@dataclass(frozen=True)
class Evaluation:
    threshold: float
    true_hard: int  # hard, scored hard (kept on the primary)
    false_hard: int  # easy, scored hard (a saving missed)
    true_easy: int
    false_easy: int  # hard, scored easy (sent to the small model: the costly mistake)

    @property
    def total(self) -> int:
        return self.true_hard + self.false_hard + self.true_easy + self.false_easy

    @property
    def accuracy(self) -> float:
        return (self.true_hard + self.true_easy) / self.total if self.total else 0.0

    @property
    def precision_hard(self) -> float:
        scored_hard = self.true_hard + self.false_hard
        return self.true_hard / scored_hard if scored_hard else 0.0

    @property
    def recall_hard(self) -> float:
        hard = self.true_hard + self.false_easy
        return self.true_hard / hard if hard else 0.0


def evaluate(scored: list[tuple[float, bool]], *, threshold: float) -> Evaluation:
    """`scored`: (difficulty, labelled hard) pairs. A score at the threshold counts as hard,
    as in decide()."""
    counts = {"th": 0, "fh": 0, "te": 0, "fe": 0}
    for score, hard in scored:
        said_hard = score >= threshold
        counts[("t" if said_hard == hard else "f") + ("h" if said_hard else "e")] += 1
    return Evaluation(threshold, counts["th"], counts["fh"], counts["te"], counts["fe"])


def threshold_best(scored: list[tuple[float, bool]]) -> Evaluation:
    """The threshold (in steps of 0.01) with the best accuracy; ties go to the one nearest 0.5."""
    candidates = [evaluate(scored, threshold=t / 100) for t in range(1, 100)]
    return max(candidates, key=lambda e: (e.accuracy, -abs(e.threshold - 0.5)))


def weights_fit(examples: list[tuple[Features, bool]], *, l2: float = 0.01,
                steps: int = 3000, rate: float = 0.5) -> tuple[Features, float]:
    """(weights, bias) of a logistic regression over the same features, fitted to labelled
    examples (True: hard) by gradient descent with a little L2 (numpy; offline only, for
    `classifier_eval --fit`: compare it with the hand-set weights before adopting it)."""
    import numpy as np

    x = np.array([[getattr(f, n) for n in FEATURE_NAMES] for f, _ in examples], dtype=float)
    y = np.array([1.0 if hard else 0.0 for _, hard in examples])
    w = np.zeros(x.shape[1])
    b = 0.0
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(x @ w + b)))
        w -= rate * (x.T @ (p - y) / len(y) + l2 * w)
        b -= rate * float(np.mean(p - y))
    return Features(*(float(v) for v in w)), b
