"""The deterministic tokenizer and generator (pure functions, no server)."""

from simulator import text


def test_it_counts_words_and_punctuation_as_tokens():
    assert text.tokenize("Hello, world!") == ["Hello", ",", "world", "!"]
    assert text.count_tokens("Hello, world!") == 4


def test_it_generates_text_whose_token_count_is_the_piece_count():
    for index in range(20):
        out = text.complete("a prompt", seed=1, index=index, max_tokens=1000, stop=[])
        assert text.count_tokens(out.text) == len(out.pieces)
        assert 16 <= len(out.pieces) <= 96


def test_it_is_deterministic_per_prompt_seed_and_index():
    a = text.complete("p", seed=3, index=0, max_tokens=100, stop=[])
    assert a == text.complete("p", seed=3, index=0, max_tokens=100, stop=[])
    assert a.text != text.complete("p", seed=3, index=1, max_tokens=100, stop=[]).text
    assert a.text != text.complete("p", seed=4, index=0, max_tokens=100, stop=[]).text
    assert a.text != text.complete("q", seed=3, index=0, max_tokens=100, stop=[]).text


def test_it_cuts_at_max_tokens_with_finish_reason_length():
    full = text.complete("p", seed=0, index=0, max_tokens=1000, stop=[])
    short = text.complete("p", seed=0, index=0, max_tokens=5, stop=[])
    assert short.pieces == full.pieces[:5]
    assert (short.finish_reason, full.finish_reason) == ("length", "stop")


def test_it_truncates_before_a_stop_string_and_reports_it():
    full = text.complete("p", seed=0, index=0, max_tokens=1000, stop=[])
    word = full.pieces[6]
    out = text.complete("p", seed=0, index=0, max_tokens=1000, stop=["zzz", word])
    assert out.text == full.text[: full.text.find(word)]
    assert (out.finish_reason, out.stop_reason) == ("stop", word)
    assert len(out.pieces) <= 7


def test_it_renders_chat_messages_into_a_countable_prompt():
    rendered = text.render_chat([{"role": "user", "content": [{"type": "text", "text": "hi"}]}])
    assert "hi" in rendered and rendered.endswith("assistant\n")
    assert len(text.token_ids(rendered)) == text.count_tokens(rendered)


def test_it_runs_to_max_tokens_when_ignore_eos_is_set():
    out = text.complete("p", seed=0, index=0, max_tokens=300, stop=[], ignore_eos=True)
    assert (len(out.pieces), out.finish_reason) == (300, "length")
    assert text.count_tokens(out.text) == 300


def test_it_extends_the_answer_to_min_tokens():
    out = text.complete("p", seed=0, index=0, max_tokens=300, stop=[], min_tokens=150)
    assert (len(out.pieces), out.finish_reason) == (150, "stop")
