"""The Redis-shared auction against `allocate()`, on a real redis-server: one replica, concurrent replicas,
replicas that die or leave, decommitment across replicas, and Redis going away and coming back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import numpy as np
import pytest
import redis.asyncio as aioredis

from prewarmer.coord.auction import Award, Bids, allocate
from prewarmer.coord.redis_budget import BudgetUnavailable, RedisBudget

QUOTA = {"a": 4.0, "b": 3.0}  # tenant "c" has no quota, and some functions have no tenant
MEMS = (0.125, 0.25, 0.5, 1.0, 2.0)


@dataclass
class Fn:
    mem: float
    tenant: str | None
    limit: int | None


@dataclass
class Submitted:
    functions: list[str]
    rank: list[int]
    value: list[float]
    mem_gb: list[float]
    tenant: list[str | None]
    max_instances: dict[str, int]

    def args(self) -> tuple:
        return self.functions, self.rank, self.value, self.mem_gb, self.tenant, self.max_instances


def make_fleet(rng: np.random.Generator, names: list[str]) -> dict[str, Fn]:
    tenants = ["a", "b", "c", None]
    return {n: Fn(float(rng.choice(MEMS)), tenants[int(rng.integers(4))],
                  int(rng.integers(1, 4)) if rng.random() < 0.3 else None) for n in names}


def random_bids(rng: np.random.Generator, fleet: dict[str, Fn], max_rank: int = 5) -> Submitted:
    s = Submitted([], [], [], [], [], {n: f.limit for n, f in fleet.items() if f.limit is not None})
    for name, fn in fleet.items():
        for k in range(1, int(rng.integers(0, max_rank + 1)) + 1):
            s.functions.append(name)
            s.rank.append(k)
            # Coarse values: plenty of exact ties, so the rank and name tie-breaks are exercised.
            s.value.append(float(np.round(rng.exponential(2.0), 1)))
            s.mem_gb.append(fn.mem)
            s.tenant.append(fn.tenant)
    return s


def reference(subs: list[Submitted], capacity: float, quota: dict[str, float],
              held: dict[str, int] | None = None) -> tuple[list[str], Award]:
    """allocate() over the union of the bids, functions indexed in name order (the shared tie-break)."""
    names = sorted({f for s in subs for f in s.functions} | {f for s in subs for f in s.max_instances})
    index = {n: i for i, n in enumerate(names)}
    tenants = list(quota)
    tindex = {t: i for i, t in enumerate(tenants)}
    func, rank, value, mem, tenant = [], [], [], [], []
    limits = np.full(len(names), np.iinfo(np.int64).max, np.int64)
    for s in subs:
        func += [index[f] for f in s.functions]
        rank += s.rank
        value += s.value
        mem += s.mem_gb
        tenant += [tindex.get(t, -1) if t is not None else -1 for t in s.tenant]
        for f, lim in s.max_instances.items():
            limits[index[f]] = lim
    bids = Bids(np.array(func, np.int64), np.array(rank, np.int64), np.array(value, float), np.array(mem, float),
                np.array(tenant, np.int64))
    held_a = None if held is None else np.array([held.get(n, 0) for n in names], np.int64)
    award = allocate(bids, len(names), capacity, np.array([quota[t] for t in tenants]), limits, held_a)
    return names, award


def nonzero(names: list[str], counts: np.ndarray) -> dict[str, int]:
    return {n: int(c) for n, c in zip(names, counts, strict=True) if c}


def usage(awards: dict[str, dict[str, int]], fleet: dict[str, Fn]) -> tuple[float, dict[str | None, float]]:
    used = 0.0
    by_tenant: dict[str | None, float] = {}
    for per_func in awards.values():
        for f, n in per_func.items():
            used += n * fleet[f].mem
            by_tenant[fleet[f].tenant] = by_tenant.get(fleet[f].tenant, 0.0) + n * fleet[f].mem
    return used, by_tenant


@pytest.fixture
async def budgets(redis_server) -> AsyncIterator[Callable[..., RedisBudget]]:
    """Make RedisBudgets on the test's server, each with its own connection; all closed at the end."""
    made: list[RedisBudget] = []

    def make(replica_id: str, capacity_gb: float = 10.0, quota: dict[str, float] | None = None,
             **kwargs) -> RedisBudget:
        b = RedisBudget(redis_server.url, "test", capacity_gb, QUOTA if quota is None else quota,
                        replica_id=replica_id, **kwargs)
        made.append(b)
        return b

    yield make
    for b in made:
        await b.close()


async def wait_until(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not reached before the deadline"
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("seed", range(5))
async def test_one_replica_gets_exactly_what_allocate_gives(budgets, seed):
    rng = np.random.default_rng(seed)
    fleet = make_fleet(rng, [f"fn-{i:03d}" for i in range(40)] + ["fn-é", "fn-z", "Fn-0"])
    capacity = float(rng.uniform(5.0, 20.0))
    budget = budgets("solo", capacity)
    held: dict[str, int] | None = None
    for _ in range(6):
        sub = random_bids(rng, fleet)
        got = await budget.submit(*sub.args())
        names, ref = reference([sub], capacity, QUOTA, held)
        counts = dict(zip(names, ref.instances.tolist(), strict=True))
        assert got.instances == {f: counts[f] for f in set(sub.functions)}
        decommitted = dict(zip(names, ref.decommitted.tolist(), strict=True))
        assert got.decommitted == {f: decommitted[f] for f in set(sub.functions)}
        assert got.price == ref.price
        assert got.used_gb == ref.used_gb
        for i, t in enumerate(QUOTA):
            assert got.tenant_used_gb[t] == ref.tenant_used_gb[i]
        no_quota = sum(n * fleet[f].mem for f, n in counts.items() if fleet[f].tenant == "c")
        assert got.tenant_used_gb.get("c", 0.0) == pytest.approx(no_quota)
        assert await budget.current() == {"solo": nonzero(names, ref.instances)}
        held = nonzero(names, ref.instances)


@pytest.mark.parametrize("n_replicas", [2, 3])
async def test_concurrent_replicas_never_over_award_and_agree_with_allocate(budgets, n_replicas):
    rng = np.random.default_rng(100 + n_replicas)
    capacity = 12.0
    fleets = [make_fleet(rng, [f"r{r}-fn-{i:02d}" for i in range(30)]) for r in range(n_replicas)]
    fleet = {n: f for fl in fleets for n, f in fl.items()}
    replicas = [budgets(f"r{r}", capacity) for r in range(n_replicas)]
    observer = budgets("observer", capacity)  # reads current() while the others submit; never bids
    contended = 0
    for _ in range(25):
        subs = [random_bids(rng, fl) for fl in fleets]
        *got, snapshot = await asyncio.gather(*(b.submit(*s.args()) for b, s in zip(replicas, subs, strict=True)),
                                              observer.current())
        after = await observer.current()
        for awards in (snapshot, after):
            used, by_tenant = usage(awards, fleet)
            assert used <= capacity + 1e-9
            for t, q in QUOTA.items():
                assert by_tenant.get(t, 0.0) <= q + 1e-9
        for g in got:
            assert g.used_gb <= capacity + 1e-9
        names, ref = reference(subs, capacity, QUOTA)
        assert set(after) == {b.replica_id for b in replicas}
        assert {f: n for per in after.values() for f, n in per.items()} == nonzero(names, ref.instances)
        for b, fl in zip(replicas, fleets, strict=True):
            assert set(after[b.replica_id]) <= set(fl)
        contended += ref.price > 0
    assert contended > 5  # the capacity was actually fought over


async def test_a_replica_that_stops_submitting_loses_its_awards_after_its_ttl(budgets, redis_server):
    # A's TTL is short but leaves room for B's first submit to see A alive on a loaded machine.
    a = budgets("a", 4.0, quota={}, ttl_ms=1000)
    b = budgets("b", 4.0, quota={}, ttl_ms=60_000)
    first = await a.submit(["hot"] * 3, [1, 2, 3], [10.0] * 3, [1.0] * 3, [None] * 3)
    assert first.instances == {"hot": 3}
    squeezed = await b.submit(["cold"] * 4, [1, 2, 3, 4], [1.0] * 4, [1.0] * 4, [None] * 4)
    assert squeezed.instances == {"cold": 1}
    assert squeezed.price == 1.0

    async def a_gone() -> bool:
        return "a" not in await b.current()

    await wait_until(a_gone)
    r = aioredis.Redis.from_url(redis_server.url)
    try:
        assert await r.exists(a._key("bids"), a._key("award"), a._key("held")) == 0
    finally:
        await r.aclose()
    whole = await b.submit(["cold"] * 4, [1, 2, 3, 4], [1.0] * 4, [1.0] * 4, [None] * 4)
    assert whole.instances == {"cold": 4}
    assert whole.price == 0.0
    assert await b.current() == {"b": {"cold": 4}}


async def test_higher_bids_of_another_replica_decommit_awards(budgets):
    a = budgets("a", 4.0, quota={})
    b = budgets("b", 4.0, quota={})
    held = await a.submit(["x"] * 4, [1, 2, 3, 4], [2.0] * 4, [1.0] * 4, ["t"] * 4)
    assert held.instances == {"x": 4} and held.decommitted == {"x": 0}
    taker = await b.submit(["y", "y"], [1, 2], [5.0, 5.0], [1.0, 1.0], ["t", "t"])
    assert taker.instances == {"y": 2}
    assert taker.tenant_used_gb == {"t": 4.0}
    assert await a.current() == {"a": {"x": 2}, "b": {"y": 2}}
    # A learns it on its next submit: it was told 4, still wants 4, gets 2.
    lost = await a.submit(["x"] * 4, [1, 2, 3, 4], [2.0] * 4, [1.0] * 4, ["t"] * 4)
    assert lost.instances == {"x": 2}
    assert lost.decommitted == {"x": 2}
    assert lost.price == 2.0
    # Counted once: the tick after, A holds what it was told.
    again = await a.submit(["x"] * 4, [1, 2, 3, 4], [2.0] * 4, [1.0] * 4, ["t"] * 4)
    assert again.decommitted == {"x": 0}
    # Giving an award up is not a decommitment.
    shrunk = await a.submit(["x"], [1], [2.0], [1.0], ["t"])
    assert shrunk.instances == {"x": 1} and shrunk.decommitted == {"x": 0}


async def test_tenant_quota_spans_replicas(budgets):
    a = budgets("a", 100.0, quota={"t": 3.0})
    b = budgets("b", 100.0, quota={"t": 3.0})
    await a.submit(["x"] * 3, [1, 2, 3], [1.0] * 3, [1.0] * 3, ["t"] * 3)
    got = await b.submit(["y"] * 3, [1, 2, 3], [2.0] * 3, [1.0] * 3, ["t"] * 3)
    assert got.instances == {"y": 3}
    assert got.price == 0.0  # refused for the quota, not for capacity
    assert await a.current() == {"a": {}, "b": {"y": 3}}


async def test_leave_hands_the_capacity_over_at_once(budgets):
    a = budgets("a", 2.0, quota={})
    b = budgets("b", 2.0, quota={})
    await a.submit(["x", "x"], [1, 2], [9.0, 9.0], [1.0, 1.0], [None, None])
    assert (await b.submit(["y", "y"], [1, 2], [1.0, 1.0], [1.0, 1.0], [None, None])).instances == {"y": 0}
    await a.leave()
    assert await b.current() == {"b": {}}
    assert (await b.submit(["y", "y"], [1, 2], [1.0, 1.0], [1.0, 1.0], [None, None])).instances == {"y": 2}


async def test_thousands_of_tied_bids_break_ties_by_name_across_replicas(budgets):
    # Every bid has the same value: only rank, then the function name (bytewise), decide.
    capacity = 700.0
    subs = []
    for names in ([f"f{i:04d}" for i in range(0, 1000, 2)] + ["é", "z"],
                  [f"f{i:04d}" for i in range(1, 1000, 2)] + ["Z", "ü"]):
        subs.append(Submitted([n for n in names for _ in range(2)], [k for _ in names for k in (1, 2)],
                              [1.0] * 2 * len(names), [1.0] * 2 * len(names), [None] * 2 * len(names), {}))
    a, b = budgets("a", capacity, quota={}), budgets("b", capacity, quota={})
    await a.submit(*subs[0].args())
    got_b = await b.submit(*subs[1].args())
    names, ref = reference(subs, capacity, {})
    assert {f: n for per in (await a.current()).values() for f, n in per.items()} == nonzero(names, ref.instances)
    assert got_b.used_gb == capacity and got_b.price == 1.0


async def test_fits_within_the_tolerance_and_a_prefix_name_goes_first(budgets):
    # 0.1 + 0.1 + 0.1 > 0.3 in floats: allocate() accepts it thanks to the 1e-9 tolerance, so must the script.
    a = budgets("a", 0.3, quota={"t": 0.3})
    got = await a.submit(["x"] * 3, [1, 2, 3], [1.0] * 3, [0.1] * 3, ["t"] * 3)
    assert got.instances == {"x": 3} and got.price == 0.0
    # Same value and rank: "fn" < "fn0" (a prefix sorts first), across replicas and within one.
    b = budgets("b", 1.0, quota={})
    c = budgets("c", 1.0, quota={})
    await a.leave()
    await b.submit(["fn0"], [1], [1.0], [1.0], [None])
    assert (await c.submit(["fn"], [1], [1.0], [1.0], [None])).instances == {"fn": 1}
    assert await b.current() == {"b": {}, "c": {"fn": 1}}
    await c.leave()
    assert (await b.submit(["fn0", "fn"], [1, 1], [1.0, 1.0], [1.0, 1.0], [None, None])).instances == {
        "fn": 1, "fn0": 0}

async def test_a_client_that_decodes_responses_works_too(redis_server):
    r = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        budget = RedisBudget(r, "decoded", 2.0, {"t": 1.0}, replica_id="é")
        got = await budget.submit(["ƒ", "ƒ", "g"], [1, 2, 1], [3.0, 2.0, 1.0], [0.5, 0.5, 1.5], ["t", "t", None])
        assert got.instances == {"ƒ": 2, "g": 0}
        assert got.tenant_used_gb == {"t": 1.0}
        assert await budget.current() == {"é": {"ƒ": 2}}
    finally:
        await r.aclose()


async def test_bad_bids_are_refused_before_redis(budgets):
    budget = budgets("a")
    with pytest.raises(ValueError):
        await budget.submit(["x", "y"], [1], [1.0, 1.0], [1.0, 1.0], [None, None])
    with pytest.raises(ValueError):
        await budget.submit(["x"], [1], [float("nan")], [1.0], [None])


async def test_redis_down_is_budget_unavailable_and_it_recovers(budgets, redis_server):
    budget = budgets("a", 2.0, quota={})
    bid = (["x", "x"], [1, 2], [1.0, 1.0], [1.0, 1.0], [None, None])
    assert (await budget.submit(*bid)).instances == {"x": 2}
    redis_server.stop()
    with pytest.raises(BudgetUnavailable, match="unavailable"):
        await budget.submit(*bid)
    with pytest.raises(BudgetUnavailable):
        await budget.current()
    with pytest.raises(BudgetUnavailable):
        await budget.leave()
    redis_server.start()
    r = aioredis.Redis.from_url(redis_server.url)
    try:
        # A restarted server has no scripts: the next call must load it again (NOSCRIPT).
        assert await r.script_exists(budget._submit.sha) == [False]
        assert (await budget.submit(*bid)).instances == {"x": 2}
        assert await r.script_exists(budget._submit.sha) == [True]
        await r.script_flush()
        assert (await budget.submit(*bid)).instances == {"x": 2}
    finally:
        await r.aclose()

