"""The deterministic tokenizer and generator (pure functions, no server)."""

from simulator import pooling, text


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


def test_it_gives_each_generated_piece_one_token_id_that_decodes_back():
    out = text.complete("p", seed=0, index=0, max_tokens=50, stop=[])
    ids = text.token_ids(out.text)
    assert len(ids) == len(out.pieces)
    assert [text.detokenize([i]) for i in ids] == list(out.pieces)


def test_it_moves_a_colliding_token_to_a_free_id_so_ids_stay_invertible():
    vocab = text.Vocabulary(size=3)
    ids = [vocab.id_of(t) for t in ("a", "b", "c")]
    assert sorted(ids) == [0, 1, 2]
    assert [vocab.token_of(i) for i in ids] == ["a", "b", "c"]
    assert vocab.id_of("b") == ids[1]


def test_it_stops_learning_tokens_once_every_id_is_taken():
    vocab = text.Vocabulary(size=2)
    first = [vocab.id_of(t) for t in ("a", "b")]
    assert vocab.id_of("zz") in (0, 1) and [vocab.token_of(i) for i in first] == ["a", "b"]


def test_it_scores_word_overlap_as_jaccard_of_lowercased_words():
    assert pooling.overlap("Rivers of France", "rivers, france!") == 2 / 3
    assert pooling.overlap("", "") == 0.0
