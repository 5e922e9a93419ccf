"""The small-model routing classifier: cheap features, a score in [0, 1], a decision."""
from __future__ import annotations

from pathlib import Path

from proxy.classifier import (
    FEATURE_NAMES,
    Decision,
    Features,
    decide,
    difficulty,
    evaluate,
    features_extract,
    score_of,
    weights_fit,
)
from proxy.management.commands.classifier_eval import examples_load, examples_score

CHAT = "chat/completions"
DATA = Path(__file__).resolve().parent.parent / "data" / "routing_prompts.jsonl"


def chat(*contents: str, **extra) -> dict:
    roles = ["user", "assistant"]
    return {"model": "m", "messages": [{"role": roles[i % 2], "content": c}
                                       for i, c in enumerate(contents)], **extra}


def test_chit_chat_is_easy():
    for text in ("Hi there!", "Thanks, that was helpful.", "Tell me a joke about cats."):
        assert difficulty(chat(text), endpoint=CHAT) < 0.3


def test_the_score_stays_between_zero_and_one():
    everything = chat("Prove, step by step, why this ```def f(): return 1``` is O(n^2): "
                      "Traceback (most recent call last) \\frac{1}{2} " * 50,
                      max_tokens=100000, tools=[{"type": "function"}],
                      response_format={"type": "json_schema", "json_schema": {}})
    assert 0.0 <= difficulty({"messages": []}, endpoint=CHAT) <= difficulty(
        everything, endpoint=CHAT) <= 1.0


def test_code_raises_difficulty():
    plain = chat("Tell me about my list of numbers.")
    code = chat("Tell me about my list of numbers.\n```python\nxs = [1, 2]\nprint(xs[0])\n```")
    assert difficulty(code, endpoint=CHAT) > difficulty(plain, endpoint=CHAT) + 0.2


def test_a_stack_trace_raises_difficulty():
    trace = ('It fails:\nTraceback (most recent call last):\n  File "app.py", line 3, in <module>\n'
             "KeyError: 'user'")
    assert difficulty(chat(trace), endpoint=CHAT) > difficulty(chat("It fails."), endpoint=CHAT)


def test_maths_raises_difficulty():
    assert features_extract(chat("Show $\\int_0^1 x^2 dx$ = 1/3"), endpoint=CHAT).maths > 0
    assert difficulty(chat("Prove that the square root of 2 is irrational."),
                      endpoint=CHAT) >= 0.5


def test_words_asking_for_reasoning_raise_difficulty():
    asked = chat("Compare the trade-offs of these two approaches to caching.")
    assert difficulty(asked, endpoint=CHAT) > difficulty(chat("Two approaches to caching."),
                                                         endpoint=CHAT)


def test_long_multi_turn_raises_difficulty():
    short = chat("What's a good name for a cat?")
    long = chat(*[f"Here is part {i} of the incident timeline. " + "The queue grew and the "
                  "workers stalled while the database was failing over. " * 6
                  for i in range(11)])
    assert difficulty(long, endpoint=CHAT) > difficulty(short, endpoint=CHAT) + 0.2


def test_a_light_edit_of_a_long_text_stays_easy():
    text = "Our office will be closed on Friday for the public holiday. " * 40
    assert difficulty(chat("Summarize this in one sentence:\n\n" + text), endpoint=CHAT) < 0.5


def test_requested_output_tools_and_schemas_raise_difficulty():
    base = difficulty(chat("Plan my week."), endpoint=CHAT)
    assert difficulty(chat("Plan my week.", max_tokens=4000), endpoint=CHAT) > base
    assert difficulty(chat("Plan my week.", tools=[{"type": "function"}]), endpoint=CHAT) > base
    schema = {"type": "json_schema", "json_schema": {"name": "week", "schema": {}}}
    assert difficulty(chat("Plan my week.", response_format=schema), endpoint=CHAT) > base


def test_the_system_prompt_does_not_count():
    question = {"role": "user", "content": "What time is it in Tokyo?"}
    system = {"role": "system", "content": "You are a careful analyst. Reason step by step. " * 30}
    assert difficulty({"messages": [system, question]}, endpoint=CHAT) == difficulty(
        {"messages": [question]}, endpoint=CHAT)


def test_completions_are_scored_from_the_prompt():
    easy = difficulty({"prompt": "The capital of France is"}, endpoint="completions")
    hard = difficulty({"prompt": "Prove by induction that the algorithm terminates."},
                      endpoint="completions")
    assert easy < 0.5 <= hard


def test_forced_primary_is_not_scored():
    assert decide(chat("Hi"), endpoint=CHAT, threshold=0.5, forced_primary=True) == Decision(
        "forced", None)


def test_threshold_boundary():
    body = chat("What is the capital of Australia?")
    score = difficulty(body, endpoint=CHAT)
    at = decide(body, endpoint=CHAT, threshold=score, forced_primary=False)
    above = decide(body, endpoint=CHAT, threshold=score + 1e-9, forced_primary=False)
    assert (at.choice, above.choice) == ("primary", "small")
    assert at.score == above.score == score


def test_endpoints_that_do_not_generate_stay_on_the_primary():
    decision = decide({"input": "hi"}, endpoint="embeddings", threshold=0.5,
                      forced_primary=False)
    assert decision == Decision("primary", None)


def test_the_labelled_set_is_large_varied_and_classified_well_at_the_default_threshold():
    rows = examples_load(DATA)
    labels = [r["label"] for r in rows]
    assert len(rows) >= 150 and labels.count("easy") >= 60 and labels.count("hard") >= 60
    assert evaluate(examples_score(rows), threshold=0.5).accuracy >= 0.8


def test_the_threshold_is_counted_as_hard():
    ev = evaluate([(0.5, True), (0.5, False), (0.2, False), (0.2, True)], threshold=0.5)
    assert (ev.true_hard, ev.false_hard, ev.true_easy, ev.false_easy) == (1, 1, 1, 1)


def test_a_fitted_model_learns_which_features_mean_hard():
    def example(code: float, light_edit: float, hard: bool):
        zero = dict.fromkeys(FEATURE_NAMES, 0.0)
        return Features(**{**zero, "code": code, "light_edit": light_edit}), hard

    examples = [example(1.0, 0.0, True), example(0.8, 0.0, True),
                example(0.0, 1.0, False), example(0.1, 0.0, False)] * 5
    weights, bias = weights_fit(examples)
    assert weights.code > 0 > weights.light_edit
    assert all((score_of(f, weights, bias) >= 0.5) == hard for f, hard in examples)
