"""Pooling and token routes of the simulator: embeddings, rerank, score, detokenize.

Against a real ``python -m simulator``; the official openai SDK where it has a method
(``embeddings.create``), raw HTTP otherwise.
"""

from __future__ import annotations

import base64
import math
import struct
from collections.abc import Iterator

import openai
import pytest

from simulator import text
from simulator.process import SimulatorProcess
from tests.simulator.support import post_json

MODEL = "sim-model"
RIVER_DOCS = ["Paris is a big city.",
              "The rivers of France are long.",
              "Rivers flow.",
              "Nothing in common here."]


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorProcess]:
    with SimulatorProcess(model=MODEL, ttft_ms=2, tokens_per_s=5000, seed=3) as proc:
        yield proc


@pytest.fixture(scope="module")
def small() -> Iterator[SimulatorProcess]:
    """A model with 32-dimensional embeddings and a 4-token context."""
    with SimulatorProcess(model=MODEL, ttft_ms=1, embedding_dim=32, max_model_len=4) as proc:
        yield proc


@pytest.fixture()
def client(sim: SimulatorProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=sim.base_url, api_key="x", max_retries=0)


def norm(vector: list[float]) -> float:
    return math.sqrt(sum(x * x for x in vector))


# ---- embeddings ------------------------------------------------------------------------------

def test_sdk_decodes_the_default_base64_into_unit_vectors_of_384_dimensions(client):
    resp = client.embeddings.create(model=MODEL, input=["Hello there, sim!", "Rivers."])
    assert [d.index for d in resp.data] == [0, 1]
    assert all(len(d.embedding) == 384 and abs(norm(d.embedding) - 1) < 1e-5
               for d in resp.data)
    assert resp.usage.prompt_tokens == resp.usage.total_tokens == 5 + 2


def test_it_sends_the_same_vector_as_floats_and_as_base64(client):
    floats = client.embeddings.create(model=MODEL, input="same text", encoding_format="float")
    decoded = client.embeddings.create(model=MODEL, input="same text")
    assert floats.data[0].embedding == decoded.data[0].embedding


def test_it_encodes_base64_as_little_endian_float32(sim, client):
    floats = client.embeddings.create(model=MODEL, input="x", encoding_format="float")
    _, body = post_json(sim.base_url + "/embeddings", {"model": MODEL, "input": "x",
                                                       "encoding_format": "base64"})
    raw = base64.b64decode(body["data"][0]["embedding"])
    assert list(struct.unpack(f"<{len(raw) // 4}f", raw)) == floats.data[0].embedding


def test_it_embeds_equal_texts_equally_and_other_texts_differently(client):
    resp = client.embeddings.create(model=MODEL, input=["a cat", "a cat", "a dog"])
    a, b, c = (d.embedding for d in resp.data)
    assert a == b and a != c


def test_it_embeds_token_ids_like_the_text_they_came_from(sim, client):
    ids = post_json(sim.url + "/tokenize", {"model": MODEL, "prompt": "Hello there"})[1]["tokens"]
    by_text = client.embeddings.create(model=MODEL, input="Hello there")
    by_ids = client.embeddings.create(model=MODEL, input=ids)
    by_lists = client.embeddings.create(model=MODEL, input=[ids, ids])
    assert by_ids.data[0].embedding == by_text.data[0].embedding
    assert [d.embedding for d in by_lists.data] == [by_text.data[0].embedding] * 2
    assert by_ids.usage.prompt_tokens == len(ids) and by_lists.usage.prompt_tokens == 2 * len(ids)


def test_it_shortens_vectors_to_the_requested_dimensions_and_renormalises(client):
    resp = client.embeddings.create(model=MODEL, input="short", dimensions=16)
    assert len(resp.data[0].embedding) == 16 and abs(norm(resp.data[0].embedding) - 1) < 1e-5


def test_it_shapes_the_embedding_body_like_vllm(sim):
    status, body = post_json(sim.base_url + "/embeddings", {"model": MODEL, "input": "a b c"})
    assert status == 200
    assert list(body) == ["id", "object", "created", "model", "data", "usage"]
    assert body["id"].startswith("embd-") and body["object"] == "list"
    assert body["model"] == MODEL and isinstance(body["created"], int)
    assert body["data"][0]["object"] == "embedding" and body["data"][0]["index"] == 0
    assert body["usage"] == {"prompt_tokens": 3, "total_tokens": 3, "completion_tokens": 0}


def test_it_sets_the_embedding_length_with_the_embedding_dim_flag(small):
    client = openai.OpenAI(base_url=small.base_url, api_key="x", max_retries=0)
    assert len(client.embeddings.create(model=MODEL, input="x").data[0].embedding) == 32


# ---- rerank and score ------------------------------------------------------------------------

def test_it_reranks_documents_by_word_overlap_best_first(sim):
    status, body = post_json(sim.url + "/v1/rerank", {
        "model": MODEL, "query": "rivers of France", "documents": RIVER_DOCS})
    assert status == 200
    assert [r["index"] for r in body["results"]] == [1, 2, 0, 3]
    assert [r["document"]["text"] for r in body["results"]][0] == RIVER_DOCS[1]
    scores = [r["relevance_score"] for r in body["results"]]
    assert scores == sorted(scores, reverse=True) and scores[0] == 0.5 and scores[-1] == 0.0


def test_it_keeps_only_the_top_n_results(sim):
    body = post_json(sim.url + "/v1/rerank", {"model": MODEL, "query": "rivers of France",
                                              "documents": RIVER_DOCS, "top_n": 2})[1]
    assert [r["index"] for r in body["results"]] == [1, 2]


def test_it_leaves_the_documents_out_when_return_documents_is_false(sim):
    body = post_json(sim.url + "/v1/rerank", {"model": MODEL, "query": "q", "documents": ["q"],
                                              "return_documents": False})[1]
    assert body["results"] == [{"index": 0, "relevance_score": 1.0}]


def test_it_shapes_the_rerank_body_like_vllm_with_usage_of_every_pair(sim):
    body = post_json(sim.url + "/v1/rerank", {"model": MODEL, "query": "rivers of France",
                                              "documents": RIVER_DOCS[:2]})[1]
    pair_tokens = 2 * 3 + text.count_tokens(RIVER_DOCS[0]) + text.count_tokens(RIVER_DOCS[1])
    assert list(body) == ["id", "model", "usage", "results"] and body["id"].startswith("rerank-")
    assert body["usage"] == {"prompt_tokens": pair_tokens, "total_tokens": pair_tokens}
    assert body["results"][0]["document"] == {"text": RIVER_DOCS[1], "multi_modal": None}


@pytest.mark.parametrize("path", ["/rerank", "/v2/rerank"])
def test_it_serves_rerank_on_vllms_other_paths(sim, path):
    status, body = post_json(sim.url + path, {"model": MODEL, "query": "rivers of France",
                                              "documents": RIVER_DOCS})
    assert status == 200 and [r["index"] for r in body["results"]] == [1, 2, 0, 3]


def test_it_scores_one_text_against_many(sim):
    status, body = post_json(sim.url + "/v1/score", {
        "model": MODEL, "text_1": "a b", "text_2": ["a b", "b a c", "d"]})
    assert status == 200
    assert [(d["index"], d["object"], d["score"]) for d in body["data"]] == [
        (0, "score", 1.0), (1, "score", 2 / 3), (2, "score", 0.0)]


def test_it_scores_pairs_one_to_one_and_counts_their_tokens(sim):
    body = post_json(sim.url + "/score", {"model": MODEL, "text_1": ["a", "x y"],
                                          "text_2": ["a", "y"]})[1]
    assert [d["score"] for d in body["data"]] == [1.0, 0.5]
    assert body["usage"] == {"prompt_tokens": 5, "total_tokens": 5, "completion_tokens": 0}
    assert body["object"] == "list" and body["id"].startswith("score-")


# ---- detokenize ------------------------------------------------------------------------------

def test_it_detokenizes_what_tokenize_returned_back_to_the_exact_text(sim):
    prompt = "  Hello,  wörld!\n\nIt's 42 °C…  "
    ids = post_json(sim.url + "/tokenize", {"model": MODEL, "prompt": prompt})[1]["tokens"]
    assert post_json(sim.url + "/detokenize", {"model": MODEL, "tokens": ids}) == (
        200, {"prompt": prompt})


# ---- errors ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("path", "body"), [
    ("/v1/embeddings", {"model": MODEL}),
    ("/v1/embeddings", {"model": MODEL, "input": [1, "a"]}),
    ("/v1/embeddings", {"model": MODEL, "input": "x", "encoding_format": "int8"}),
    ("/v1/embeddings", {"model": MODEL, "input": "x", "dimensions": 385}),
    ("/v1/embeddings", {"model": MODEL, "input": [text.VOCAB_SIZE]}),
    ("/v1/rerank", {"model": MODEL, "query": "q"}),
    ("/v1/rerank", {"model": MODEL, "query": "q", "documents": []}),
    ("/v1/rerank", {"model": MODEL, "query": "q", "documents": ["d"], "top_n": -1}),
    ("/v1/score", {"model": MODEL, "text_1": "a"}),
    ("/v1/score", {"model": MODEL, "text_1": ["a", "b"], "text_2": ["a", "b", "c"]}),
    ("/detokenize", {"model": MODEL, "tokens": "12"}),
    ("/detokenize", {"model": MODEL, "tokens": [-1]}),
])
def test_it_answers_400_in_vllm_error_shape_for_bad_bodies(sim, path, body):
    status, answer = post_json(sim.url + path, body)
    assert status == 400
    assert answer["error"]["type"] == "BadRequestError" and answer["error"]["code"] == 400
    assert answer["error"]["message"]


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/embeddings", {"input": "x"}),
    ("/v1/rerank", {"query": "q", "documents": ["d"]}),
    ("/v1/score", {"text_1": "a", "text_2": "b"}),
    ("/detokenize", {"tokens": [1]}),
    ("/v1/responses", {"input": "hi"}),
])
def test_it_answers_404_for_an_unknown_model(sim, path, body):
    status, answer = post_json(sim.url + path, {**body, "model": "nope"})
    assert status == 404 and answer["error"]["type"] == "NotFoundError"


def test_sdk_raises_not_found_for_embeddings_of_an_unknown_model(client):
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="nope", input="x")


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/embeddings", {"input": ["a", "a b c d e"]}),
    ("/v1/rerank", {"query": "a b c", "documents": ["d", "e f"]}),
    ("/v1/score", {"text_1": "a b", "text_2": ["c", "d e f"]}),
])
def test_it_rejects_pooling_inputs_longer_than_the_context(small, path, body):
    status, answer = post_json(small.url + path, body)
    assert status == 400 and "maximum context length is 4 tokens" in answer["error"]["message"]
