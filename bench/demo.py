"""``make demo``: a few minutes of realistic traffic against a running `make run`, so that every
cost mechanism fires and the dashboard has something to show.

The mix: repeated questions (exact cache), paraphrases of earlier ones (semantic cache), easy
chit-chat and lookups (small-model routing), hard reasoning and code prompts (the primary
model), and long multi-turn conversations (prompt compression), streamed and not, through the
official `openai` SDK, a few requests in flight at once.
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import openai

ROOT = Path(__file__).resolve().parent.parent

QUESTIONS = [  # a question, then ways of asking the same thing
    ("How do I reverse a list in Python?",
     "What's the way to reverse a Python list?", "How can I reverse a list in Python?",
     "In Python, how do I reverse a list?"),
    ("What is the capital of Australia?",
     "Which city is Australia's capital?", "What's the capital city of Australia?",
     "Tell me the capital of Australia."),
    ("How long should I boil an egg for a soft yolk?",
     "For a soft yolk, how long do I boil an egg?",
     "How many minutes should I boil an egg to get a soft yolk?",
     "How long do I boil an egg if I want the yolk soft?"),
    ("What does HTTP status 429 mean?",
     "What is the meaning of the HTTP 429 status code?", "What does a 429 HTTP status mean?",
     "HTTP status 429: what does it mean?"),
    ("How do I undo the last git commit but keep my changes?",
     "How can I undo my last git commit and keep the changes?",
     "In git, how do I undo the last commit but keep my changes?",
     "How to undo the last git commit while keeping my changes?"),
    ("What is a good way to store fresh basil?",
     "How should I store fresh basil?", "What's the best way to store fresh basil?",
     "How do I store fresh basil?"),
]
EASY = [
    "Hi! How are you today?",
    "Translate 'good morning' into French.",
    "Give me a synonym for 'happy'.",
    "What day comes after Tuesday?",
    "Rewrite this more politely: send me the report.",
]
HARD = [
    "Prove that there are infinitely many primes, step by step, and explain each step.",
    "Design a rate limiter for a distributed API gateway. Compare token buckets and sliding "
    "windows, discuss the trade-offs across replicas, and give Python code for the core.",
    "Here is a stack trace:\n```\nTraceback (most recent call last):\n  File \"app.py\", line "
    "42, in handle\n    total = sum(x.price for x in items)\nTypeError: unsupported operand "
    "type(s) for +: 'int' and 'NoneType'\n```\nWhy does this happen and how should I fix it "
    "robustly? Analyse the possible causes.",
    "Derive the closed form of the sum of k^2 for k = 1..n and prove it by induction.",
]


def api_key(explicit: str | None) -> str:
    if explicit:
        return explicit
    if master := os.environ.get("SLUICE_MASTER_KEY"):
        return master
    path = Path(os.environ.get("SLUICE_VAR_DIR", ROOT / "var")) / "bootstrap-api-key"
    if path.exists():
        return path.read_text().strip()
    sys.exit("No API key: pass --key, set SLUICE_MASTER_KEY, or run `make run` first.")


def conversation(turns: int) -> list[dict]:
    messages = [{"role": "system", "content": "You are a helpful travel assistant."}]
    for i in range(turns):
        messages.append({"role": "user", "content": f"Question {i}: tell me about stop {i} "
                         "of my trip, the sights, the food and how to get around. " * 6})
        messages.append({"role": "assistant", "content": f"Stop {i} is lovely. " * 40})
    messages.append({"role": "user", "content": "Now summarise the whole trip in one line."})
    return messages


def one_request(client: openai.OpenAI, rng: random.Random, counts: Counter) -> None:
    kind = rng.choices(["repeat", "paraphrase", "easy", "hard", "long"],
                       weights=[3, 2, 3, 2, 1])[0]
    if kind == "repeat":
        messages = [{"role": "user", "content": rng.choice(QUESTIONS)[0]}]
    elif kind == "paraphrase":
        messages = [{"role": "user", "content": rng.choice(rng.choice(QUESTIONS)[1:])}]
    elif kind == "easy":
        messages = [{"role": "user", "content": rng.choice(EASY)}]
    elif kind == "hard":
        messages = [{"role": "user", "content": rng.choice(HARD)}]
    else:
        messages = conversation(rng.randint(6, 14))
    stream = rng.random() < 0.5
    # Questions are asked deterministically (temperature 0: cacheable); the rest is sampled,
    # so the caches pass it by and routing and compression decide.
    temperature = 0 if kind in ("repeat", "paraphrase") else 0.7
    try:
        response = client.chat.completions.with_raw_response.create(
            model="default", messages=messages, max_tokens=48, temperature=temperature,
            stream=stream)
        if stream:
            for _ in response.parse():
                pass
        decision = response.headers.get("x-sluice-decision", "").split(";")[0]
        counts[f"{kind} {response.headers.get('x-sluice-cache', '-')} {decision}".strip()] += 1
    except openai.APIError as exc:
        counts[f"{kind} error {type(exc).__name__}"] += 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.demo", description=__doc__.splitlines()[0])
    p.add_argument("--url", default=f"http://127.0.0.1:{os.environ.get('PORT', '8000')}")
    p.add_argument("--key", help="an API key (default: the one `make run` printed)")
    p.add_argument("--minutes", type=float, default=3.0)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args(argv)
    client = openai.OpenAI(base_url=args.url + "/v1", api_key=api_key(args.key), max_retries=2)
    deadline = time.monotonic() + args.minutes * 60
    counts: Counter = Counter()

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        while time.monotonic() < deadline:
            one_request(client, rng, counts)
            time.sleep(rng.uniform(0.05, 0.3))

    threads = [threading.Thread(target=worker, args=(args.seed + i,), daemon=True)
               for i in range(args.concurrency)]
    for t in threads:
        t.start()
    print(f"demo: sending traffic to {args.url} for {args.minutes:g} min "
          f"({args.concurrency} in flight); watch {args.url}/dashboard/", flush=True)
    while any(t.is_alive() for t in threads):
        time.sleep(10)
        print(f"demo: {sum(counts.values())} requests so far: "
              + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
