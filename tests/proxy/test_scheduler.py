"""The backend choice on hand-built pool states: load, prefix, session, bounded load."""
from dataclasses import dataclass

import pytest

from proxy.prefix import prefix_hashes, prefix_text
from proxy.scheduler import (
    LEAST_LOAD,
    PREFIX_AWARE,
    REASON_BOUNDED,
    REASON_LOAD,
    REASON_ONLY,
    REASON_PREFIX,
    REASON_SESSION,
    SESSION,
    Hint,
    PrefixTable,
    Scheduler,
    Weights,
    WeightsError,
    hint_build,
    weights_for,
    weights_parse,
)
from proxy.snapshot import BackendInfo, RouteInfo


@dataclass
class Load:
    in_flight: int = 0
    waiting: int = 0
    kv_usage: float = 0.0


def backends(count: int, max_concurrency: int = 16) -> list[BackendInfo]:
    return [BackendInfo(id=i, name=f"b{i}", base_url=f"http://127.0.0.1:{9000 + i}",
                        model="m", weight=1, max_concurrency=max_concurrency)
            for i in range(count)]


def scheduler(load_factor: float = 1.25, load_slack: float = 0.0) -> Scheduler:
    return Scheduler(prefix_blocks=10_000, sessions=1_000, load_factor=load_factor,
                     load_slack=load_slack)


def conversation(turns: int, *, system: str = "You are a careful assistant. " * 20) -> dict:
    messages = [{"role": "system", "content": system}]
    for t in range(turns):
        messages.append({"role": "user", "content": f"Question {t}: " + "tell me more. " * 30})
        if t < turns - 1:
            messages.append({"role": "assistant", "content": f"Answer {t}. " + "sure. " * 40})
    return {"model": "m", "messages": messages}


PREFIX = weights_for(PREFIX_AWARE)


def prefix_hint(body: dict) -> Hint:
    return Hint(PREFIX, prefix_hashes(body, "chat/completions"))


# --- least load ------------------------------------------------------------------------------

def test_least_load_picks_the_backend_with_fewest_requests_in_flight():
    pool = backends(3)
    loads = [Load(in_flight=5), Load(in_flight=1), Load(in_flight=3)]

    index, reason = scheduler().choose(pool, loads, Hint(weights_for(LEAST_LOAD)))

    assert (index, reason) == (1, REASON_LOAD)


def test_least_load_counts_the_waiting_requests_a_backend_reports():
    pool = backends(2)
    loads = [Load(in_flight=1, waiting=6), Load(in_flight=3)]

    index, _ = scheduler().choose(pool, loads, Hint(weights_for(LEAST_LOAD)))

    assert index == 1


def test_least_load_avoids_a_full_kv_cache_between_equal_queues():
    pool = backends(2)
    loads = [Load(in_flight=2, kv_usage=0.95), Load(in_flight=2, kv_usage=0.10)]

    index, _ = scheduler().choose(pool, loads, Hint(weights_for(LEAST_LOAD)))

    assert index == 1


def test_least_load_weighs_load_against_each_backends_max_concurrency():
    small, large = backends(1, max_concurrency=4)[0], backends(2, max_concurrency=64)[1]
    loads = [Load(in_flight=3), Load(in_flight=10)]  # 75 % full against 16 % full

    index, _ = scheduler().choose([small, large], loads, Hint(weights_for(LEAST_LOAD)))

    assert index == 1


def test_equal_backends_take_turns():
    pool = backends(4)
    sched = scheduler()
    picks = [sched.choose(pool, [Load()] * 4, Hint(weights_for(LEAST_LOAD)))[0]
             for _ in range(8)]

    assert sorted(picks) == [0, 0, 1, 1, 2, 2, 3, 3]


def test_a_single_candidate_is_the_only_choice():
    index, reason = scheduler().choose(backends(1), [Load(in_flight=9)], prefix_hint({}))

    assert (index, reason) == (0, REASON_ONLY)


# --- prefix ----------------------------------------------------------------------------------

def test_the_next_turn_of_a_conversation_goes_where_the_last_one_went():
    pool, sched = backends(4), scheduler()
    first, _ = sched.choose(pool, [Load()] * 4, prefix_hint(conversation(1)))
    loads = [Load(in_flight=1) for _ in pool]

    index, reason = sched.choose(pool, loads, prefix_hint(conversation(2)))

    assert (index, reason) == (first, REASON_PREFIX)


def test_the_longest_matching_prefix_wins():
    pool, sched = backends(3), scheduler()
    body = conversation(3)
    sched.prefixes.remember(prefix_hashes(conversation(1), "chat/completions"), "b0")
    sched.prefixes.remember(prefix_hashes(conversation(2), "chat/completions"), "b2")

    index, reason = sched.choose(pool, [Load()] * 3, prefix_hint(body))

    assert (pool[index].name, reason) == ("b2", REASON_PREFIX)


def test_a_prefix_backend_within_the_load_bound_wins_over_an_idler_one():
    pool, sched = backends(2), scheduler()
    body = conversation(2)
    sched.prefixes.remember(prefix_hashes(body, "chat/completions"), "b0")
    loads = [Load(in_flight=5), Load(in_flight=4)]  # 6 <= 1.25 * (10 / 2)

    index, reason = sched.choose(pool, loads, prefix_hint(body))

    assert (index, reason) == (0, REASON_PREFIX)


def test_an_overloaded_prefix_backend_spills_over_to_the_least_loaded():
    pool, sched = backends(3), scheduler()
    body = conversation(2)
    sched.prefixes.remember(prefix_hashes(body, "chat/completions"), "b0")
    loads = [Load(in_flight=8), Load(in_flight=2), Load(in_flight=1)]  # b0 over 1.25x

    index, reason = sched.choose(pool, loads, prefix_hint(body))

    assert (pool[index].name, reason) == ("b2", REASON_BOUNDED)


def test_at_low_traffic_a_prefix_backend_keeps_affinity_within_the_slack():
    pool, sched = backends(4), scheduler(load_slack=4)
    body = conversation(2)
    sched.prefixes.remember(prefix_hashes(body, "chat/completions"), "b0")
    near = [Load(in_flight=3), Load(), Load(), Load()]  # 4 <= 1 + 4: kept
    far = [Load(in_flight=5), Load(), Load(), Load()]  # 6 > 1.5 + 4: spilled

    assert sched.choose(pool, near, prefix_hint(body)) == (0, REASON_PREFIX)
    assert sched.choose(pool, far, prefix_hint(body))[1] == REASON_BOUNDED


def test_a_spilled_request_teaches_the_table_its_new_backend():
    pool, sched = backends(2), scheduler()
    body = conversation(2)
    hashes = prefix_hashes(body, "chat/completions")
    sched.prefixes.remember(hashes, "b0")
    sched.choose(pool, [Load(in_flight=9), Load()], prefix_hint(body))

    assert set(sched.prefixes.match(hashes)) == {"b0", "b1"}


def test_a_prompt_without_a_known_prefix_goes_to_the_least_loaded():
    pool = backends(3)
    loads = [Load(in_flight=2), Load(in_flight=2), Load(in_flight=0)]

    index, reason = scheduler().choose(pool, loads, prefix_hint(conversation(1)))

    assert (index, reason) == (2, REASON_LOAD)


def test_the_prefix_table_forgets_the_least_recently_used_blocks_tail_first():
    table = PrefixTable(max_blocks=4)
    table.remember((1, 2, 3), "b0")
    table.remember((7, 8), "b1")  # 5 blocks: the first chain's last block goes

    assert table.match((1, 2, 3)) == {"b0": 2}
    assert table.match((7, 8)) == {"b1": 2}
    assert len(table) == 4


def test_the_prefix_table_keeps_a_few_backends_per_block_most_recent_last():
    table = PrefixTable(max_blocks=100, per_block=2)
    for name in ("b0", "b1", "b2"):
        table.remember((5,), name)

    assert table.match((5,)) == {"b1": 1, "b2": 1}


# --- session ---------------------------------------------------------------------------------

def test_a_session_sticks_to_its_backend():
    pool, sched = backends(3), scheduler()
    weights = weights_for(SESSION)
    first, _ = sched.choose(pool, [Load()] * 3, Hint(weights, (), "user-42"))
    loads = [Load(in_flight=1) for _ in pool]

    index, reason = sched.choose(pool, loads, Hint(weights, (), "user-42"))

    assert (index, reason) == (first, REASON_SESSION)


def test_an_overloaded_session_backend_moves_the_session():
    pool, sched = backends(2), scheduler()
    weights = weights_for(SESSION)
    sched.sessions.pin("user-42", "b0")

    index, reason = sched.choose(pool, [Load(in_flight=9), Load()], Hint(weights, (), "u-1"))
    assert index == 1 and reason == REASON_LOAD  # another session: plain least load
    index, reason = sched.choose(pool, [Load(in_flight=9), Load()],
                                 Hint(weights, (), "user-42"))

    assert (index, reason) == (1, REASON_BOUNDED)
    assert sched.sessions.get("user-42") == "b1"


# --- weights and hints -----------------------------------------------------------------------

def test_weights_text_overrides_the_policys_defaults():
    assert weights_for(PREFIX_AWARE, "prefix=3, kv=0") == Weights(load=1.0, kv=0.0, prefix=3.0)


@pytest.mark.parametrize("text", ["prefix", "speed=1", "load=-1", "load=abc", "kv=nan"])
def test_bad_weights_text_is_refused(text):
    with pytest.raises(WeightsError):
        weights_parse(text)


def test_round_robin_needs_no_hint():
    route = RouteInfo(name="r", model="m", baseline_model="m", balance=weights_for("round_robin"))

    assert hint_build(route, conversation(1), endpoint="chat/completions", headers={}) is None


def test_least_load_hashes_no_prefix():
    route = RouteInfo(name="r", model="m", baseline_model="m", balance=weights_for(LEAST_LOAD))

    hint = hint_build(route, conversation(3), endpoint="chat/completions", headers={})

    assert hint.prefix == () and hint.session is None


def test_the_session_comes_from_the_header_before_the_user_field():
    route = RouteInfo(name="r", model="m", baseline_model="m", balance=weights_for(SESSION))
    body = {**conversation(1), "user": "from-body"}

    by_header = hint_build(route, body, endpoint="chat/completions",
                           headers={"x-session-id": "from-header"})
    by_user = hint_build(route, body, endpoint="chat/completions", headers={})

    assert (by_header.session, by_user.session) == ("from-header", "from-body")


# --- prefix hashing --------------------------------------------------------------------------

def test_a_conversations_earlier_turn_is_a_leading_run_of_its_next_turn():
    shorter = prefix_hashes(conversation(2), "chat/completions")
    longer = prefix_hashes(conversation(3), "chat/completions")

    assert len(shorter) > 2 and longer[:len(shorter)] == shorter


def test_a_different_system_prompt_shares_no_block():
    a = prefix_hashes(conversation(2, system="Alpha. " * 60), "chat/completions")
    b = prefix_hashes(conversation(2, system="Beta. " * 60), "chat/completions")

    assert not set(a) & set(b)


def test_a_short_prompt_has_no_prefix_blocks():
    assert prefix_hashes({"messages": [{"role": "user", "content": "hi"}]},
                         "chat/completions") == ()


def test_message_boundaries_are_part_of_the_prefix():
    a = {"messages": [{"role": "user", "content": "x" * 300}, {"role": "user", "content": "y"}]}
    b = {"messages": [{"role": "user", "content": "x" * 299}, {"role": "user", "content": "xy"}]}

    assert prefix_text(a, "chat/completions") != prefix_text(b, "chat/completions")


def test_a_null_content_message_hashes_like_an_empty_one():
    tools = {"messages": [{"role": "system", "content": "s" * 600},
                          {"role": "assistant", "content": None, "tool_calls": []}]}
    empty = {"messages": [{"role": "system", "content": "s" * 600},
                          {"role": "assistant", "content": ""}]}

    assert prefix_text(tools, "chat/completions") == prefix_text(empty, "chat/completions")


def test_blocks_grow_so_a_long_prompt_has_few():
    long = {"messages": [{"role": "user", "content": "w" * 16_000}]}

    assert 10 <= len(prefix_hashes(long, "chat/completions")) <= 20


def test_a_difference_deep_in_a_long_prompt_changes_its_later_blocks():
    base = "A long shared document. " * 700  # ~17 KB
    changed = base[:7700] + "DIFFERENT" + base[7709:]  # in the sampled head of a 1.9 KB block
    a = prefix_hashes({"prompt": base}, "completions")
    b = prefix_hashes({"prompt": changed}, "completions")

    assert a[0] == b[0] and a[-1] != b[-1]


def test_completions_and_responses_prompts_are_hashed_too():
    long = "A shared document. " * 40

    assert prefix_hashes({"prompt": long}, "completions")
    assert prefix_hashes({"input": long, "instructions": "Be brief."}, "responses")
    assert prefix_hashes({"input": long}, "embeddings") == ()


def test_text_content_parts_hash_like_their_text():
    plain = {"messages": [{"role": "user", "content": "z" * 600}]}
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "z" * 600}]}]}

    assert prefix_hashes(plain, "chat/completions") == prefix_hashes(parts, "chat/completions")
