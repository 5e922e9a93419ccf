"""The continuous-batching timing model and FIFO scheduler, on a plain event loop."""

import asyncio

import pytest

from simulator.engine import Engine, Scheduler, TimingModel


def test_it_slows_tokens_down_as_the_batch_grows():
    model = TimingModel(ttft_s=0.02, token_interval_s=0.01, batch_slowdown=0.002)
    assert model.token_interval(1) == pytest.approx(0.01)
    assert model.token_interval(101) == pytest.approx(0.012)
    assert model.first_token_delay(1000) > model.first_token_delay(0) == 0.02


def test_it_queues_beyond_max_num_seqs_and_admits_fifo():
    async def scenario():
        sched = Scheduler(max_num_seqs=2, kv_capacity_tokens=10_000)
        await sched.acquire(1, 10)
        await sched.acquire(1, 10)
        order = []

        async def later(name):
            await sched.acquire(1, 10)
            order.append(name)

        tasks = [asyncio.create_task(later(n)) for n in ("a", "b")]
        await asyncio.sleep(0)
        assert (sched.running, sched.waiting) == (2, 2)
        sched.release(1, 10)
        await asyncio.sleep(0)
        assert order == ["a"] and (sched.running, sched.waiting) == (2, 1)
        sched.release(1, 10)
        await asyncio.gather(*tasks)
        assert order == ["a", "b"]

    asyncio.run(scenario())


def test_it_forgets_a_waiter_that_is_cancelled():
    async def scenario():
        sched = Scheduler(max_num_seqs=1, kv_capacity_tokens=10_000)
        await sched.acquire(1, 5)
        task = asyncio.create_task(sched.acquire(1, 5))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert sched.waiting == 0
        sched.release(1, 5)
        assert (sched.running, sched.kv_tokens) == (0, 0)

    asyncio.run(scenario())


def test_it_reports_kv_usage_from_held_tokens():
    async def scenario():
        sched = Scheduler(max_num_seqs=8, kv_capacity_tokens=100)
        await sched.acquire(1, 30)
        sched.grow(20)
        assert sched.kv_usage == pytest.approx(0.5)

    asyncio.run(scenario())


def test_it_paces_tokens_and_releases_the_slot_on_exit():
    async def scenario():
        engine = Engine(timing=TimingModel(ttft_s=0.03, token_interval_s=0.01,
                                           prefill_s_per_token=0.0),
                        max_num_seqs=4, kv_capacity_tokens=10_000)
        loop = asyncio.get_running_loop()
        start = loop.time()
        async with engine.sequence(prompt_tokens=10) as seq:
            got = 0
            while got < 5:
                got += await seq.advance(5 - got)
            assert engine.scheduler.running == 1
            seq.finish_reason = "length"
        elapsed = loop.time() - start
        assert 0.065 <= elapsed < 0.2  # 30 ms TTFT + 4 intervals of 10 ms
        assert engine.scheduler.running == 0 and engine.scheduler.kv_tokens == 0
        assert engine.stats.generation_tokens == 5 and engine.stats.success["length"] == 1

    asyncio.run(scenario())
