"""Compiled event loop of the replay simulator.

All state lives in flat numpy arrays (see `SimState`) so that one numba-compiled loop can process
millions of events without a Python call per event. Python only steps in at control ticks, where a
policy reads the per-function counters and hands back arrays of actions (`apply_actions`).

Model (BENCHMARKS.md): instances are starting, ready-idle or ready-busy; a request that finds no
ready instance with a free slot binds to a starting one (or starts one) and waits for it: a cold
start. Idle instances expire after the function's keep-alive; with a prewarm delay an instance is
released as soon as it idles and a fresh one is started that long after. With a memory cap,
requests that cannot get memory (after evicting idle instances, least recently used first) queue
in FIFO order and are dropped at the deadline; a start the policy asks for takes free memory only.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from prewarmer.prefetch import prefetch, prefetch2

# Per-function int columns (fi).
F_ALIVE, F_BUSY, F_STARTING, F_IDLE, F_REQ, F_ARRIVALS, F_COLD, F_DONE, F_TIMEOUT = range(9)
F_STARTS, F_STARTS_SERVED, F_RELEASED, F_PEND, F_PGEN, F_QLEN, F_CC, F_QUEUED = range(9, 17)
F_TENANT, F_MAXINST = 17, 18  # tenant index (-1 none); most instances the function may have alive
F_PEAK = 19  # most requests in the system at once since the last observation
F_MININST = 20  # warm floor: fewest instances the function keeps alive (idle ones are held, missing ones started)
NFI = 21
NO_LIMIT = 1 << 62
# Per-function float columns (fs).
S_MEM_GB, S_STARTUP, S_KA, S_PWD, S_LAST_T, S_WASTE, S_BUSY, S_CONC, S_LAST_DONE, S_SIGMA = range(10)
S_LAT_SUM, S_KA_SURPLUS = 10, 11
S_MAX_HOLD = 12  # award: most ready instances the function may hold idle
S_PW_AT = 13  # when the pending pre-warm of the function's window starts (its latest EV_PREWARM)
NFS = 14
# Instance columns.
I_CREATED, I_READY, I_IDLE_SINCE = range(3)
I_EXP_AT = 3  # when the instance's expiry is due (its entry in the heap may be earlier: see `_schedule_expire`)
NIF = 4
I_FUNC, I_STATE, I_INFLIGHT, I_CLAIMED, I_VER, I_PREV, I_NEXT, I_GPREV, I_GNEXT, I_LIST, I_BOUND = range(11)
I_HPOS = 11  # heap slot of the instance's expiry entry (-1: none tracked; see `_schedule_expire`)
I_EXP_VER = 12  # the version the due expiry was scheduled with
NII = 13
# Instance states and per-function list kinds (an instance sits in at most one of these lists).
ST_FREE, ST_STARTING, ST_READY = 0, 1, 2
L_NONE, L_IDLE, L_PARTIAL, L_STARTAVAIL = -1, 0, 1, 2
NLISTS = 3
# Request columns (only requests that wait: bound to a starting instance, or queued for memory).
R_ARR, R_DUR = 0, 1
NRF = 2
R_FUNC, R_STATE, R_FPREV, R_FNEXT, R_GPREV, R_GNEXT = range(6)
NRI = 6
RQ_FREE, RQ_BOUND, RQ_QUEUED = 0, 1, 2
# Globals.
G_FREE, G_NFREE, G_RFREE, G_NRFREE, G_HSIZE, G_QHEAD, G_QTAIL, G_GHEAD, G_GTAIL = range(9)
G_OVERFLOW, G_ITN, G_REQ_TOTAL = 9, 10, 11
G_RLN = 12  # rows in the request log
G_ESIZE = 13  # entries in the expiry heap (G_HSIZE: in the main heap)
G_NSTARTING = 14  # instances starting, all functions
NGI = 15
G_MEM, G_PEAK, G_CAP, G_DEADLINE = range(4)
G_PER_STARTING = 4  # start-up seconds added per other instance starting at the same time (0: none)
G_BY_POLICY_S = 5  # start-up seconds added to an instance the policy starts (not a request)
NGF = 6  # then (used GB, quota GB) per tenant
# Event kinds.
EV_DONE, EV_READY, EV_EXPIRE, EV_PREWARM, EV_TIMEOUT = range(5)
# The two heaps (rows of `hk` / `hp`): expiries, and every other event.
H_MAIN, H_EXPIRE = 0, 1
# Latency histogram: 1000 log bins per decade from 1 microsecond to 1e8 ms (0.23% resolution).
LAT_BINS_PER_DECADE = 1000
LAT_MIN_EXP = -3
LAT_NBINS = 11 * LAT_BINS_PER_DECADE

STATUS_DONE, STATUS_GROW = 0, 1
# Every kernel is compiled without numba's reference counting (`_nrt=False`, as numba's own internal kernels
# are): they allocate nothing and only index their caller's arrays, and the atomic reference-count updates
# numba otherwise makes on the array arguments of each call cost more than the simulation itself (about 3x on
# the sidecar's tick, see benchmarks/README.md).
# The kernels of the path every request takes (arrival, execution, completion, parking, the heaps) are also inlined
# (`inline="always"`) into `advance`: a call between kernels passes each array as its whole descriptor (7-9
# words), so a call with ~16 arrays pushed 130 words on the stack, and a request made about eight such calls; the
# engine's part of the sidecar tick fell from ~29 to ~12 ms for 10k functions. Rarer paths (starting, releasing,
# queueing under a cap) stay calls: inlining them too made `advance` take 3 minutes to compile instead of 45 s.
# Request log (optional, for comparing with the live fleet): one row per request that starts executing.
RL_FUNC, RL_ARR, RL_START, RL_DUR = range(4)
NRL = 4


# ---------------------------------------------------------------- heap of (time, payload)
# The payload packs kind (3 bits), version (28 bits) and id (32 bits) into one int64, so the heap is two
# arrays and ties at the same instant resolve by kind: completions first, timeouts last.
# Pops follow the total order of (time, payload), whatever the heaps' layout, so an entry that would pop as
# a no-op can be dropped or moved without changing anything else. Expiries live in a heap of their own (one
# entry per idle instance, `I_HPOS` tracks its slot), every other event in the main one (about one entry per
# request in flight); `next_heap` picks the top of the two. An expiry entry stays where it is when its
# instance parks again with a later expiry, and goes back at the due time when it pops early
# (`_schedule_expire`, `_expire_due`).
_ID_MASK = (1 << 32) - 1
VER_MASK = (1 << 28) - 1


@njit(cache=True, _nrt=False, inline="always")
def _hless(hk, hp, h, i, j):
    if hk[h, i] != hk[h, j]:
        return hk[h, i] < hk[h, j]
    return hp[h, i] < hp[h, j]


@njit(cache=True, _nrt=False, inline="always")
def _hmoved(isi, h, payload, src, dst):
    """The entry `payload` moved from slot src to dst of heap h: follow it if it is a tracked expiry."""
    if h == H_EXPIRE:
        i = payload & _ID_MASK
        if isi[i, I_HPOS] == src:
            isi[i, I_HPOS] = dst


@njit(cache=True, _nrt=False, inline="always")
def _sift_up(hk, hp, isi, h, n, t, payload):
    """Put (t, payload) into the hole at n of heap h, moving it up; returns its slot."""
    while n > 0:
        p = (n - 1) >> 1
        if hk[h, p] > t or (hk[h, p] == t and hp[h, p] > payload):
            hk[h, n], hp[h, n] = hk[h, p], hp[h, p]
            _hmoved(isi, h, hp[h, n], p, n)
            n = p
        else:
            break
    hk[h, n], hp[h, n] = t, payload
    return n


@njit(cache=True, _nrt=False, inline="always")
def _sift_down(hk, hp, isi, h, size, i, t, payload):
    """Put (t, payload) into the hole at i of heap h of `size` entries, moving it down; returns its slot."""
    while True:
        c = 2 * i + 1
        if c >= size:
            break
        if c + 1 < size and _hless(hk, hp, h, c + 1, c):
            c += 1
        if hk[h, c] < t or (hk[h, c] == t and hp[h, c] < payload):
            hk[h, i], hp[h, i] = hk[h, c], hp[h, c]
            _hmoved(isi, h, hp[h, i], c, i)
            i = c
        else:
            break
    hk[h, i], hp[h, i] = t, payload
    return i


@njit(cache=True, _nrt=False, inline="always")
def _payload(kind, ident, ver):
    return (np.int64(kind) << 60) | ((np.int64(ver) & VER_MASK) << 32) | np.int64(ident)


@njit(cache=True, _nrt=False, inline="always")
def heap_push(hk, hp, gi, isi, t, kind, ident, ver):
    h, size = (H_EXPIRE, G_ESIZE) if kind == EV_EXPIRE else (H_MAIN, G_HSIZE)
    n = gi[size]
    gi[size] = n + 1
    return _sift_up(hk, hp, isi, h, n, t, _payload(kind, ident, ver))


@njit(cache=True, _nrt=False, inline="always")
def next_heap(hk, hp, gi):
    """The heap whose top comes next in the total order of (time, payload), the one heap would give (-1 when
    both are empty)."""
    if gi[G_ESIZE] == 0:
        return H_MAIN if gi[G_HSIZE] > 0 else -1
    if gi[G_HSIZE] == 0 or hk[H_EXPIRE, 0] < hk[H_MAIN, 0] \
            or (hk[H_EXPIRE, 0] == hk[H_MAIN, 0] and hp[H_EXPIRE, 0] < hp[H_MAIN, 0]):
        return H_EXPIRE
    return H_MAIN


@njit(cache=True, _nrt=False, inline="always")
def heap_pop(hk, hp, gi, isi, h):
    """Pop the top of heap h (`next_heap`'s)."""
    size = G_ESIZE if h == H_EXPIRE else G_HSIZE
    t, payload = hk[h, 0], hp[h, 0]
    kind, ident = payload >> 60, payload & _ID_MASK
    if h == H_EXPIRE and isi[ident, I_HPOS] == 0:
        isi[ident, I_HPOS] = -1
    n = gi[size] - 1
    gi[size] = n
    if n > 0:
        lk, lp = hk[h, n], hp[h, n]
        i = _sift_down(hk, hp, isi, h, n, 0, lk, lp)
        _hmoved(isi, h, lp, n, i)
    return t, kind, ident, (payload >> 32) & VER_MASK


@njit(cache=True, _nrt=False, inline="always")
def _schedule_expire(hk, hp, gi, isi, isf, t, i, ver):
    """Instance i expires at t (version ver). Its tracked expiry entry, if any, is moved up when t is earlier
    and otherwise left where it is: when it pops early, `_expire_due` puts it back at (t, ver). An instance
    parks after every request, so moving the entry down each time (to the far end of the heap: the keep-alive
    is the longest wait in it) cost a third of the heap's work; the entry now moves about once a keep-alive."""
    isf[i, I_EXP_AT] = t
    isi[i, I_EXP_VER] = ver
    pos = isi[i, I_HPOS]
    payload = _payload(EV_EXPIRE, i, ver)
    if pos < 0 or pos >= gi[G_ESIZE] or hp[H_EXPIRE, pos] & _ID_MASK != i:
        isi[i, I_HPOS] = heap_push(hk, hp, gi, isi, t, EV_EXPIRE, i, ver)
        return
    if hk[H_EXPIRE, pos] < t or (hk[H_EXPIRE, pos] == t and hp[H_EXPIRE, pos] <= payload):
        return  # pops first, then goes to (t, ver)
    isi[i, I_HPOS] = -2  # the entry is placed below; untracked while its neighbours move
    isi[i, I_HPOS] = _sift_up(hk, hp, isi, H_EXPIRE, pos, t, payload)


@njit(cache=True, _nrt=False, inline="always")
def _expire_due(hk, hp, gi, isi, isf, t, i, ver):
    """An expiry entry of instance i popped at (t, ver): True if it is the one due, to act on. An entry that
    popped before the due one is put back at the due time; one of an instance that has since been released,
    restarted or put to work is dropped (the due expiry would find it so and do nothing: a busy instance
    parks again, with a new version, before it can expire)."""
    if isi[i, I_STATE] != ST_READY or isi[i, I_INFLIGHT] != 0 or (isi[i, I_VER] & VER_MASK) != \
            (isi[i, I_EXP_VER] & VER_MASK):
        return False
    due, due_ver = isf[i, I_EXP_AT], isi[i, I_EXP_VER] & VER_MASK
    if t < due or (t == due and ver != due_ver):
        isi[i, I_HPOS] = heap_push(hk, hp, gi, isi, due, EV_EXPIRE, i, due_ver)
        return False
    return True


# ---------------------------------------------------------------- intrusive doubly linked lists
@njit(cache=True, _nrt=False, inline="always")
def _ll_push(prev, nxt, heads, tails, lid, node):
    t = tails[lid]
    prev[node] = t
    nxt[node] = -1
    if t >= 0:
        nxt[t] = node
    else:
        heads[lid] = node
    tails[lid] = node


@njit(cache=True, _nrt=False, inline="always")
def _ll_remove(prev, nxt, heads, tails, lid, node):
    p, n = prev[node], nxt[node]
    if p >= 0:
        nxt[p] = n
    else:
        heads[lid] = n
    if n >= 0:
        prev[n] = p
    else:
        tails[lid] = p
    prev[node] = -1
    nxt[node] = -1


@njit(cache=True, _nrt=False, inline="always")
def _list_add(isi, lh, lt, i, kind):
    # The instance lists' links are columns of isi, indexed in place (a column view per call would cost an
    # allocation's reference counting in the hottest path).
    f = isi[i, I_FUNC]
    lid = f * NLISTS + kind
    t = lt[lid]
    isi[i, I_PREV] = t
    isi[i, I_NEXT] = -1
    if t >= 0:
        isi[t, I_NEXT] = i
    else:
        lh[lid] = i
    lt[lid] = i
    isi[i, I_LIST] = kind


@njit(cache=True, _nrt=False, inline="always")
def _list_del(isi, lh, lt, i):
    kind = isi[i, I_LIST]
    if kind >= 0:
        lid = isi[i, I_FUNC] * NLISTS + kind
        p, n = isi[i, I_PREV], isi[i, I_NEXT]
        if p >= 0:
            isi[p, I_NEXT] = n
        else:
            lh[lid] = n
        if n >= 0:
            isi[n, I_PREV] = p
        else:
            lt[lid] = p
        isi[i, I_PREV] = -1
        isi[i, I_NEXT] = -1
        isi[i, I_LIST] = L_NONE


@njit(cache=True, _nrt=False, inline="always")
def _gidle_add(isi, gi, i):
    t = gi[G_GTAIL]
    isi[i, I_GPREV] = t
    isi[i, I_GNEXT] = -1
    if t >= 0:
        isi[t, I_GNEXT] = i
    else:
        gi[G_GHEAD] = i
    gi[G_GTAIL] = i


@njit(cache=True, _nrt=False, inline="always")
def _gidle_del(isi, gi, i):
    p, n = isi[i, I_GPREV], isi[i, I_GNEXT]
    if p >= 0:
        isi[p, I_GNEXT] = n
    else:
        gi[G_GHEAD] = n
    if n >= 0:
        isi[n, I_GPREV] = p
    else:
        gi[G_GTAIL] = p
    isi[i, I_GPREV] = -1
    isi[i, I_GNEXT] = -1


# ---------------------------------------------------------------- accounting
@njit(cache=True, _nrt=False, inline="always")
def _touch(fs, fi, f, t):
    """Integrate the function's memory and concurrency up to t (piecewise-constant counts)."""
    dt = t - fs[f, S_LAST_T]
    if dt > 0.0:
        alive, busy = fi[f, F_ALIVE], fi[f, F_BUSY]
        fs[f, S_WASTE] += (alive - busy) * fs[f, S_MEM_GB] * dt
        fs[f, S_BUSY] += busy * fs[f, S_MEM_GB] * dt
        fs[f, S_CONC] += fi[f, F_REQ] * dt
        fs[f, S_LAST_T] = t


@njit(cache=True, _nrt=False, inline="always")
def _record_latency(lat_hist, fs, f, seconds):
    fs[f, S_LAT_SUM] += seconds
    if lat_hist.shape[0] == 0:  # no histogram kept (the sidecar's warm fleet): skip the logarithm
        return
    ms = seconds * 1000.0
    if ms <= 10.0 ** LAT_MIN_EXP:
        b = 0
    else:
        b = int(np.floor((np.log10(ms) - LAT_MIN_EXP) * LAT_BINS_PER_DECADE))
        if b >= LAT_NBINS:
            b = LAT_NBINS - 1
    lat_hist[b] += 1


# ---------------------------------------------------------------- instances
@njit(cache=True, _nrt=False)
def _release(fs, fi, isf, isi, gi, gf, lh, lt, i, t):
    f = isi[i, I_FUNC]
    _touch(fs, fi, f, t)
    if isi[i, I_LIST] == L_IDLE:
        _gidle_del(isi, gi, i)
    _list_del(isi, lh, lt, i)
    isi[i, I_STATE] = ST_FREE
    isi[i, I_VER] += 1
    fi[f, F_ALIVE] -= 1
    fi[f, F_IDLE] -= 1
    fi[f, F_RELEASED] += 1
    gf[G_MEM] -= fs[f, S_MEM_GB]
    k = fi[f, F_TENANT]
    if k >= 0:
        gf[NGF + 2 * k] -= fs[f, S_MEM_GB]
    isi[i, I_NEXT] = gi[G_FREE]
    gi[G_FREE] = i
    gi[G_NFREE] += 1


@njit(cache=True, _nrt=False)
def _fits(fs, fi, isi, gi, gf, lh, lt, f, t, isf, evict):
    """Make room for one instance of f, evicting idle instances (LRU) if `evict`; False if impossible."""
    need = fs[f, S_MEM_GB]
    while gf[G_MEM] + need > gf[G_CAP] + 1e-9:
        v = gi[G_GHEAD]
        if v < 0 or not evict:
            return False
        _release(fs, fi, isf, isi, gi, gf, lh, lt, v, t)
    return True


@njit(cache=True, _nrt=False)
def _tenant_fits(fs, fi, isf, isi, gi, gf, lh, lt, f, k, t, evict):
    """Make room under tenant k's quota, evicting its own idle instances (the oldest) if `evict`; False if
    impossible."""
    need = fs[f, S_MEM_GB]
    while gf[NGF + 2 * k] + need > gf[NGF + 2 * k + 1] + 1e-9:
        if not evict:
            return False
        v = lh[f * NLISTS + L_IDLE]
        if v < 0:
            best_t = np.inf
            for g in range(fs.shape[0]):
                if fi[g, F_TENANT] != k:
                    continue
                i = lh[g * NLISTS + L_IDLE]
                if i >= 0 and isf[i, I_IDLE_SINCE] < best_t:
                    v, best_t = i, isf[i, I_IDLE_SINCE]
        if v < 0:
            return False
        _release(fs, fi, isf, isi, gi, gf, lh, lt, v, t)
    return True


@njit(cache=True, _nrt=False)
def _start(fs, fi, isf, isi, gi, gf, lh, lt, hk, hp, f, t, by_policy):
    """Start an instance of f at t (`by_policy`: for the policy's actions, not a request); returns its index, -1
    when memory or slots are lacking, -2 when the function or its tenant is at its own limit (others may still
    start)."""
    if fi[f, F_ALIVE] >= fi[f, F_MAXINST]:
        return -2
    # A policy's start takes free memory only: demand evicts idle instances, a guess does not (a platform's
    # scale-up waits for room rather than preempt another function's warm pods).
    k = fi[f, F_TENANT]
    if k >= 0 and not _tenant_fits(fs, fi, isf, isi, gi, gf, lh, lt, f, k, t, not by_policy):
        return -2
    if gf[G_CAP] < np.inf and not _fits(fs, fi, isi, gi, gf, lh, lt, f, t, isf, not by_policy):
        return -1
    i = gi[G_FREE]
    if i < 0:
        gi[G_OVERFLOW] += 1
        return -1
    gi[G_FREE] = isi[i, I_NEXT]
    gi[G_NFREE] -= 1
    _touch(fs, fi, f, t)
    isi[i, I_FUNC] = f
    isi[i, I_STATE] = ST_STARTING
    isi[i, I_INFLIGHT] = 0
    isi[i, I_CLAIMED] = 0
    isi[i, I_VER] += 1
    isi[i, I_BOUND] = -1
    isi[i, I_LIST] = L_NONE
    isi[i, I_GPREV] = -1
    isi[i, I_GNEXT] = -1
    dur = fs[f, S_STARTUP]
    if fs[f, S_SIGMA] > 0.0:
        dur *= np.exp(fs[f, S_SIGMA] * np.random.standard_normal())
    # Instances starting together share the machine that starts them (a gateway spawning processes on a few cores).
    dur += gf[G_PER_STARTING] * gi[G_NSTARTING] + (gf[G_BY_POLICY_S] if by_policy else 0.0)
    gi[G_NSTARTING] += 1
    isf[i, I_CREATED] = t
    isf[i, I_READY] = t + dur
    fi[f, F_ALIVE] += 1
    fi[f, F_IDLE] += 1  # "idle" here counts alive instances not executing: starting or ready-idle
    fi[f, F_STARTING] += 1
    fi[f, F_STARTS] += 1
    gf[G_MEM] += fs[f, S_MEM_GB]
    if k >= 0:
        gf[NGF + 2 * k] += fs[f, S_MEM_GB]
    if gf[G_MEM] > gf[G_PEAK]:
        gf[G_PEAK] = gf[G_MEM]
    _list_add(isi, lh, lt, i, L_STARTAVAIL)
    heap_push(hk, hp, gi, isi, t + dur, EV_READY, i, isi[i, I_VER])
    return i


@njit(cache=True, _nrt=False, inline="always")
def _log_request(rlog, gi, isi, i, arr, t, dur):
    if rlog.shape[0] == 0:
        return
    n = gi[G_RLN]
    rlog[n, RL_FUNC] = isi[i, I_FUNC]
    rlog[n, RL_ARR] = arr
    rlog[n, RL_START] = t
    rlog[n, RL_DUR] = dur
    gi[G_RLN] = n + 1


@njit(cache=True, _nrt=False, inline="always")
def _begin(fs, fi, isi, lh, lt, gi, hk, hp, lat_hist, rlog, i, t, arr, dur):
    """One request starts executing on ready instance i at t."""
    _log_request(rlog, gi, isi, i, arr, t, dur)
    f = isi[i, I_FUNC]
    _touch(fs, fi, f, t)
    if isi[i, I_INFLIGHT] == 0:
        fi[f, F_BUSY] += 1
        fi[f, F_IDLE] -= 1
    if isi[i, I_LIST] == L_IDLE:
        _gidle_del(isi, gi, i)
    isi[i, I_INFLIGHT] += 1
    _list_del(isi, lh, lt, i)
    if isi[i, I_INFLIGHT] < fi[f, F_CC]:
        _list_add(isi, lh, lt, i, L_PARTIAL)
    _record_latency(lat_hist, fs, f, t - arr + dur)
    heap_push(hk, hp, gi, isi, t + dur, EV_DONE, i, 0)


@njit(cache=True, _nrt=False, inline="always")
def _becomes_idle(fs, fi, isf, isi, gi, gf, lh, lt, hk, hp, i, t):
    """Instance i has no request left: keep it for the keep-alive, or release it and prewarm later."""
    f = isi[i, I_FUNC]
    pwd = fs[f, S_PWD]
    if pwd > 0.0 and fi[f, F_ALIVE] > fi[f, F_MININST]:
        fi[f, F_PEND] += 1
        fi[f, F_PGEN] += 1
        _release(fs, fi, isf, isi, gi, gf, lh, lt, i, t)
        fs[f, S_PW_AT] = t + pwd
        heap_push(hk, hp, gi, isi, t + pwd, EV_PREWARM, f, fi[f, F_PGEN])
        return
    _park_idle(fs, fi, isf, isi, gi, gf, lh, lt, hk, hp, i, t)


@njit(cache=True, _nrt=False, inline="always")
def _park_idle(fs, fi, isf, isi, gi, gf, lh, lt, hk, hp, i, t):
    """Keep idle instance i warm: the function's last instance for the keep-alive, any other one for
    min(keep-alive, surplus keep-alive). A window policy like hybrid speaks for the function (is *an*
    instance needed?), so scale-out instances need not be held as long as the last one."""
    f = isi[i, I_FUNC]
    ka = fs[f, S_KA]
    limit = ka if fi[f, F_ALIVE] == 1 else min(ka, fs[f, S_KA_SURPLUS])
    if fi[f, F_ALIVE] <= fi[f, F_MININST]:  # within the warm floor: held until the floor is lowered
        limit = np.inf
    elif limit <= 0.0 or fi[f, F_IDLE] - fi[f, F_STARTING] > fs[f, S_MAX_HOLD]:  # beyond its award: never held
        _release(fs, fi, isf, isi, gi, gf, lh, lt, i, t)
        return
    isf[i, I_IDLE_SINCE] = t
    isi[i, I_VER] += 1
    _list_del(isi, lh, lt, i)
    _list_add(isi, lh, lt, i, L_IDLE)
    _gidle_add(isi, gi, i)
    if limit < np.inf:
        _schedule_expire(hk, hp, gi, isi, isf, t + limit, i, isi[i, I_VER])


# ---------------------------------------------------------------- waiting requests
@njit(cache=True, _nrt=False)
def _req_new(rqf, rqi, gi, f, arr, dur):
    r = gi[G_RFREE]
    if r < 0:
        gi[G_OVERFLOW] += 1
        return -1
    gi[G_RFREE] = rqi[r, R_FNEXT]
    gi[G_NRFREE] -= 1
    rqf[r, R_ARR] = arr
    rqf[r, R_DUR] = dur
    rqi[r, R_FUNC] = f
    rqi[r, R_FPREV] = -1
    rqi[r, R_FNEXT] = -1
    rqi[r, R_GPREV] = -1
    rqi[r, R_GNEXT] = -1
    return r


@njit(cache=True, _nrt=False)
def _req_free(rqi, gi, r):
    rqi[r, R_STATE] = RQ_FREE
    rqi[r, R_FNEXT] = gi[G_RFREE]
    gi[G_RFREE] = r
    gi[G_NRFREE] += 1


@njit(cache=True, _nrt=False)
def _bind(fs, fi, isi, lh, lt, rqi, r, i):
    """Request r waits for starting instance i: a cold start."""
    f = isi[i, I_FUNC]
    rqi[r, R_STATE] = RQ_BOUND
    rqi[r, R_FNEXT] = isi[i, I_BOUND]
    isi[i, I_BOUND] = r
    isi[i, I_CLAIMED] += 1
    fi[f, F_COLD] += 1
    if isi[i, I_CLAIMED] >= fi[f, F_CC]:
        _list_del(isi, lh, lt, i)


@njit(cache=True, _nrt=False)
def _unqueue(fi, rqi, gi, qh, qt, r):
    f = rqi[r, R_FUNC]
    _ll_remove(rqi[:, R_FPREV], rqi[:, R_FNEXT], qh, qt, f, r)
    _ll_remove(rqi[:, R_GPREV], rqi[:, R_GNEXT], gi[G_QHEAD:G_QHEAD + 1], gi[G_QTAIL:G_QTAIL + 1], 0, r)
    fi[f, F_QLEN] -= 1


@njit(cache=True, _nrt=False)
def _drain_queue(fs, fi, isf, isi, gi, gf, lh, lt, hk, hp, rqi, qh, qt, t):
    """Give freed memory to queued requests in arrival order (head of line blocks the rest, except
    requests of a function or tenant at its own limit: they wait without holding the others up). True when a
    request is left waiting for memory (then no start the policy asks for may take what memory is free)."""
    r = gi[G_QHEAD]
    while r >= 0:
        nxt = rqi[r, R_GNEXT]
        f = rqi[r, R_FUNC]
        i = _start(fs, fi, isf, isi, gi, gf, lh, lt, hk, hp, f, t, False)
        if i == -2:
            r = nxt
            continue
        if i < 0:
            return True
        _unqueue(fi, rqi, gi, qh, qt, r)
        _bind(fs, fi, isi, lh, lt, rqi, r, i)
        r = nxt
    return False


# ---------------------------------------------------------------- one arrival
@njit(cache=True, _nrt=False, inline="always")
def _ready_instance(lh, lt, f):
    """The ready instance an arrival of function f takes (-1: none): one with a free slot, else the most
    recently used idle one (which lets the oldest ones expire)."""
    i = lh[f * NLISTS + L_PARTIAL]
    return lt[f * NLISTS + L_IDLE] if i < 0 else i


@njit(cache=True, _nrt=False, inline="always")
def _arrive(fs, fi, isf, isi, gi, gf, lh, lt, hk, hp, rqf, rqi, qh, qt,
            lat_hist, rlog, it_f, it_v, f, t, dur):
    _touch(fs, fi, f, t)
    fi[f, F_ARRIVALS] += 1
    fi[f, F_REQ] += 1
    if fi[f, F_REQ] > fi[f, F_PEAK]:
        fi[f, F_PEAK] = fi[f, F_REQ]
    gi[G_REQ_TOTAL] += 1
    if fs[f, S_LAST_DONE] >= 0.0:
        n = gi[G_ITN]
        it_f[n] = f
        it_v[n] = max(0.0, t - fs[f, S_LAST_DONE])
        gi[G_ITN] = n + 1
    if fi[f, F_PEND] > 0:
        fi[f, F_PEND] -= 1  # the instance a prewarm was meant for is being started now instead
    base = f * NLISTS
    i = _ready_instance(lh, lt, f)
    if i >= 0:
        _begin(fs, fi, isi, lh, lt, gi, hk, hp, lat_hist, rlog, i, t, t, dur)
        return
    r = _req_new(rqf, rqi, gi, f, t, dur)
    if r < 0:
        return
    i = lh[base + L_STARTAVAIL]
    if i < 0 and fi[f, F_QLEN] == 0:
        i = _start(fs, fi, isf, isi, gi, gf, lh, lt, hk, hp, f, t, False)
    if i >= 0:
        _bind(fs, fi, isi, lh, lt, rqi, r, i)
        return
    rqi[r, R_STATE] = RQ_QUEUED
    _ll_push(rqi[:, R_FPREV], rqi[:, R_FNEXT], qh, qt, f, r)
    _ll_push(rqi[:, R_GPREV], rqi[:, R_GNEXT], gi[G_QHEAD:G_QHEAD + 1], gi[G_QTAIL:G_QTAIL + 1], 0, r)
    fi[f, F_QLEN] += 1
    fi[f, F_QUEUED] += 1
    if gf[G_DEADLINE] < np.inf:
        heap_push(hk, hp, gi, isi, t + gf[G_DEADLINE], EV_TIMEOUT, r, 0)


# ---------------------------------------------------------------- one heap event
@njit(cache=True, _nrt=False, inline="always")
def _event(fs, fi, isf, isi, gi, gf, lh, lt, hk, hp, rqf, rqi, qh, qt, lat_hist, rlog,
           t, kind, ident, ver):
    capped = gf[G_CAP] < np.inf
    if kind == EV_DONE:
        i = ident
        f = isi[i, I_FUNC]
        _touch(fs, fi, f, t)
        fi[f, F_DONE] += 1
        fi[f, F_REQ] -= 1
        gi[G_REQ_TOTAL] -= 1
        if t > fs[f, S_LAST_DONE]:
            fs[f, S_LAST_DONE] = t
        isi[i, I_INFLIGHT] -= 1
        if fi[f, F_QLEN] > 0:  # a queued request of the same function takes the slot at once
            r = qh[f]
            _unqueue(fi, rqi, gi, qh, qt, r)
            _begin_queued(fs, fi, isi, lh, lt, gi, hk, hp, lat_hist, rlog, rqf, rqi, i, t, r)
            return
        if isi[i, I_INFLIGHT] == 0:
            fi[f, F_BUSY] -= 1
            fi[f, F_IDLE] += 1
            _becomes_idle(fs, fi, isf, isi, gi, gf, lh, lt, hk, hp, i, t)
        elif isi[i, I_LIST] != L_PARTIAL:
            _list_add(isi, lh, lt, i, L_PARTIAL)
        if capped:
            _drain_queue(fs, fi, isf, isi, gi, gf, lh, lt, hk, hp, rqi, qh, qt, t)
    elif kind == EV_READY:
        i = ident
        if (isi[i, I_VER] & VER_MASK) != ver or isi[i, I_STATE] != ST_STARTING:
            return
        f = isi[i, I_FUNC]
        _touch(fs, fi, f, t)
        isi[i, I_STATE] = ST_READY
        fi[f, F_STARTING] -= 1
        gi[G_NSTARTING] -= 1
        _list_del(isi, lh, lt, i)
        r = isi[i, I_BOUND]
        isi[i, I_BOUND] = -1
        if r >= 0:
            fi[f, F_STARTS_SERVED] += 1
        while r >= 0:
            nxt = rqi[r, R_FNEXT]
            _begin(fs, fi, isi, lh, lt, gi, hk, hp, lat_hist, rlog, i, t, rqf[r, R_ARR], rqf[r, R_DUR])
            _req_free(rqi, gi, r)
            r = nxt
        isi[i, I_CLAIMED] = 0
        if isi[i, I_INFLIGHT] == 0:
            # A prewarmed instance: its keep-alive window starts now that it is loaded.
            _park_idle(fs, fi, isf, isi, gi, gf, lh, lt, hk, hp, i, t)
            if capped:
                _drain_queue(fs, fi, isf, isi, gi, gf, lh, lt, hk, hp, rqi, qh, qt, t)
    elif kind == EV_EXPIRE:
        i = ident
        if _expire_due(hk, hp, gi, isi, isf, t, i, ver):
            f = isi[i, I_FUNC]
            if fi[f, F_ALIVE] <= fi[f, F_MININST]:  # the warm floor holds it (`_refloor` re-times it when lowered)
                return
            until = isf[i, I_IDLE_SINCE] + fs[f, S_KA]
            if fi[f, F_ALIVE] == 1 and until > t + 1e-9:  # it became the last one: full keep-alive
                if until < np.inf:
                    _schedule_expire(hk, hp, gi, isi, isf, until, i, ver)
                return
            _release(fs, fi, isf, isi, gi, gf, lh, lt, i, t)
            if capped:
                _drain_queue(fs, fi, isf, isi, gi, gf, lh, lt, hk, hp, rqi, qh, qt, t)
    elif kind == EV_PREWARM:
        f = ident
        if ver == (fi[f, F_PGEN] & VER_MASK):
            k = fi[f, F_PEND]
            fi[f, F_PEND] = 0
            if capped and _drain_queue(fs, fi, isf, isi, gi, gf, lh, lt, hk, hp, rqi, qh, qt, t):
                k = 0  # requests wait for memory: the window's prewarm does not go ahead of them
            for _ in range(k):
                if _start(fs, fi, isf, isi, gi, gf, lh, lt, hk, hp, f, t, True) < 0:
                    break
    elif kind == EV_TIMEOUT:
        r = ident
        if rqi[r, R_STATE] == RQ_QUEUED:
            f = rqi[r, R_FUNC]
            _touch(fs, fi, f, t)
            _unqueue(fi, rqi, gi, qh, qt, r)
            fi[f, F_TIMEOUT] += 1
            fi[f, F_REQ] -= 1
            gi[G_REQ_TOTAL] -= 1
            _req_free(rqi, gi, r)


@njit(cache=True, _nrt=False, inline="always")
def _begin_queued(fs, fi, isi, lh, lt, gi, hk, hp, lat_hist, rlog, rqf, rqi, i, t, r):
    """A queued request takes a slot that just freed on its own function's instance (no cold start)."""
    f = isi[i, I_FUNC]
    arr, dur = rqf[r, R_ARR], rqf[r, R_DUR]
    _log_request(rlog, gi, isi, i, arr, t, dur)
    _req_free(rqi, gi, r)
    # The instance stays busy: the slot passes straight from one request to the next.
    isi[i, I_INFLIGHT] += 1
    _record_latency(lat_hist, fs, f, t - arr + dur)
    heap_push(hk, hp, gi, isi, t + dur, EV_DONE, i, 0)


# ---------------------------------------------------------------- the loop
@njit(cache=True, _nrt=False)
def advance(t_end, arr_t, arr_f, arr_d, pos, fs, fi, isf, isi, gi, gf, lh, lt, hk, hp,
            rqf, rqi, qh, qt, lat_hist, rlog, it_f, it_v, min_free, drain):
    """Process arrivals from `pos` and events strictly before t_end.

    With `drain`, stop instead as soon as no request is left in the system (end of a replay).
    Returns (new pos, status, time reached); STATUS_GROW asks the caller for bigger pools.
    """
    n = arr_t.shape[0]
    while True:
        if gi[G_NFREE] < min_free or gi[G_NRFREE] < min_free \
                or max(gi[G_HSIZE], gi[G_ESIZE]) + 4 * min_free > hk.shape[1] or gi[G_ITN] >= it_f.shape[0] \
                or (rlog.shape[0] > 0 and gi[G_RLN] + min_free > rlog.shape[0]):
            return pos, STATUS_GROW, 0.0
        ta = arr_t[pos] if pos < n else np.inf
        h = next_heap(hk, hp, gi)
        th = hk[h, 0] if h >= 0 else np.inf
        if drain and gi[G_REQ_TOTAL] == 0:
            return pos, STATUS_DONE, -1.0
        if th <= ta:
            if th >= t_end:
                return pos, STATUS_DONE, t_end
            t, kind, ident, ver = heap_pop(hk, hp, gi, isi, h)
            _event(fs, fi, isf, isi, gi, gf, lh, lt, hk, hp, rqf, rqi, qh, qt, lat_hist, rlog,
                   t, kind, ident, ver)
            if drain and gi[G_REQ_TOTAL] == 0:
                return pos, STATUS_DONE, t
        else:
            if ta >= t_end:
                return pos, STATUS_DONE, t_end
            _prefetch_ahead(arr_f, pos, fs, fi, isf, isi, lh, lt)
            _arrive(fs, fi, isf, isi, gi, gf, lh, lt, hk, hp, rqf, rqi, qh, qt,
                    lat_hist, rlog, it_f, it_v, arr_f[pos], ta, arr_d[pos])
            pos += 1


PREFETCH_FUNCTION = 16  # arrivals ahead whose function's rows are prefetched
PREFETCH_INSTANCE = 8  # arrivals ahead whose likely instance's rows are (its list heads were prefetched before)


@njit(cache=True, _nrt=False, inline="always")
def _prefetch_ahead(arr_f, pos, fs, fi, isf, isi, lh, lt):
    """Start loading what the arrivals a little ahead will touch: their functions' rows and list heads, and the
    instance `_arrive` will most likely pick. Hints only (nothing is written; a stale guess costs a load)."""
    k = pos + PREFETCH_FUNCTION
    if k < arr_f.shape[0]:
        g = arr_f[k]
        prefetch2(fs, g, 0)
        prefetch2(fs, g, fs.shape[1] - 1)
        prefetch2(fi, g, 0)
        prefetch2(fi, g, fi.shape[1] // 2)
        prefetch2(fi, g, fi.shape[1] - 1)
        prefetch(lh, g * NLISTS)
        prefetch(lt, g * NLISTS)
    k = pos + PREFETCH_INSTANCE
    if k < arr_f.shape[0]:
        i = _ready_instance(lh, lt, arr_f[k])
        if i >= 0:
            prefetch2(isi, i, 0)
            prefetch2(isi, i, isi.shape[1] - 1)
            prefetch2(isf, i, 0)


@njit(cache=True, _nrt=False)
def touch_all(fs, fi, t):
    for f in range(fs.shape[0]):
        _touch(fs, fi, f, t)


@njit(cache=True, _nrt=False)
def apply_actions(t, keep_alive, surplus_keep_alive, prewarm_delay, prewarm, scale_to, release, max_hold,
                  max_instances, min_instances, fs, fi, isf, isi, gi, gf, lh, lt, hk, hp, rqi, qh, qt):
    """Apply one tick's actions for every function. NaN / negative entries mean "no change".

    Order: settings and releases first, then (under a memory cap) requests already waiting take the
    memory, and only then do prewarms start: a prewarm never jumps ahead of a queued request.
    A warm floor (`min_instances`) wins over releases, scale-downs and awards of idle instances."""
    nf = fs.shape[0]
    for f in range(nf):
        if min_instances.shape[0] and min_instances[f] >= 0:
            lowered = min_instances[f] < fi[f, F_MININST]
            fi[f, F_MININST] = min_instances[f]
            if lowered:
                _refloor(fs, fi, isf, isi, gi, gf, lh, lt, hk, hp, f, t)
        if keep_alive.shape[0] and not np.isnan(keep_alive[f]):
            fs[f, S_KA] = keep_alive[f]
        if surplus_keep_alive.shape[0] and not np.isnan(surplus_keep_alive[f]):
            fs[f, S_KA_SURPLUS] = surplus_keep_alive[f]
        if prewarm_delay.shape[0] and not np.isnan(prewarm_delay[f]):
            fs[f, S_PWD] = prewarm_delay[f]
        if max_hold.shape[0] and not np.isnan(max_hold[f]):
            fs[f, S_MAX_HOLD] = max_hold[f]
        if max_instances.shape[0] and max_instances[f] >= 0:
            fi[f, F_MAXINST] = max_instances[f]
        drop = 0
        if release.shape[0] and release[f] > 0:
            drop = release[f]
        if scale_to.shape[0] and scale_to[f] >= 0:
            drop = max(drop, fi[f, F_ALIVE] - scale_to[f])
        if fs[f, S_MAX_HOLD] < np.inf:
            drop = max(drop, fi[f, F_IDLE] - fi[f, F_STARTING] - int(fs[f, S_MAX_HOLD]))
        drop = min(drop, fi[f, F_ALIVE] - fi[f, F_MININST])
        while drop > 0:
            i = lh[f * NLISTS + L_IDLE]  # oldest idle first
            if i < 0:
                break
            _release(fs, fi, isf, isi, gi, gf, lh, lt, i, t)
            drop -= 1
    if gf[G_CAP] < np.inf and _drain_queue(fs, fi, isf, isi, gi, gf, lh, lt, hk, hp, rqi, qh, qt, t):
        return  # requests still wait for memory: no prewarm, scale-up or floor goes ahead of them
    for f in range(nf):
        want = 0
        if prewarm.shape[0] and prewarm[f] > 0:
            want = prewarm[f]
        if scale_to.shape[0] and scale_to[f] >= 0:
            want = max(want, scale_to[f] - fi[f, F_ALIVE])
        if fs[f, S_MAX_HOLD] < np.inf:
            want = min(want, max(0, int(fs[f, S_MAX_HOLD]) - fi[f, F_IDLE]))
        want = max(want, fi[f, F_MININST] - fi[f, F_ALIVE])
        for _ in range(want):
            if _start(fs, fi, isf, isi, gi, gf, lh, lt, hk, hp, f, t, True) < 0:
                break


@njit(cache=True, _nrt=False)
def _refloor(fs, fi, isf, isi, gi, gf, lh, lt, hk, hp, f, t):
    """f's warm floor was lowered: its idle instances get their expiry back, counted from when each idled under
    the keep-alive in force now; those idle for longer go now, oldest first, down to the new floor."""
    i = lh[f * NLISTS + L_IDLE]
    while i >= 0 and fi[f, F_ALIVE] > fi[f, F_MININST]:
        nxt = isi[i, I_NEXT]
        limit = fs[f, S_KA] if fi[f, F_ALIVE] == 1 else min(fs[f, S_KA], fs[f, S_KA_SURPLUS])
        if limit < np.inf:
            until = isf[i, I_IDLE_SINCE] + limit
            if until <= t:
                _release(fs, fi, isf, isi, gi, gf, lh, lt, i, t)
            else:
                _schedule_expire(hk, hp, gi, isi, isf, until, i, isi[i, I_VER])
        i = nxt


@njit(cache=True, _nrt=False)
def seed_engine(seed):
    np.random.seed(seed)
