"""KV reuse across turns and shared openings: same completions as fresh prefill, less work."""

from __future__ import annotations

import torch

from oel.backends.base import SamplingParams
from oel.backends.hf import HFBackend
from oel.backends.prefix_cache import PrefixKVStore
from oel.backends.tiny import tiny_chat_model
from oel.trajectory import Message

RULES = "You are on a frozen lake. Reach the goal G and avoid holes. Answer with one move in brackets."


def _backends(**kw):
    model, tok = tiny_chat_model(seed=3, dtype=torch.float32)
    fresh = HFBackend(model, tok, model_id="tiny", prefix_cache_bytes=0, **kw)
    reuse = HFBackend(model, tok, model_id="tiny", **kw)
    return fresh, reuse


def _play(backend: HFBackend, params_for_turn, episodes: int = 5, turns: int = 3) -> list[list[str]]:
    """Several episodes of a fake game: each turn appends the answer and a new observation."""
    chats = [[Message(role="system", content=RULES), Message(role="user", content=f"map {i}: " + "F" * (3 + 5 * i))] for i in range(episodes)]
    answers: list[list[str]] = [[] for _ in range(episodes)]
    for t in range(turns):
        live = [i for i in range(episodes) if t < turns - (i % 2)]  # some episodes end early
        gens = backend.chat_with_seeds([chats[i] for i in live], params_for_turn(t), [1000 * i + t for i in live])
        for i, g in zip(live, gens):
            answers[i].append(g.text)
            chats[i] = chats[i] + [Message(role="assistant", content=g.text), Message(role="user", content=f"turn {t}: you are at {i},{t}")]
    return answers


def test_multi_turn_completions_equal_fresh_prefill_greedy_and_sampled():
    fresh, reuse = _backends()
    for params in (lambda t: SamplingParams(temperature=0.0, max_new_tokens=6),
                   lambda t: SamplingParams(temperature=0.9, top_p=0.95, top_k=40, max_new_tokens=4 + 3 * t)):
        assert _play(reuse, params) == _play(fresh, params)
    stats = reuse.prefix_store.stats()
    assert stats["hits"] > 0 and stats["reused_share"] > 0.5, stats


def test_mixed_batch_of_new_and_continued_episodes_and_small_batches():
    fresh, reuse = _backends(max_batch_size=2)
    params = lambda t: SamplingParams(temperature=0.8, max_new_tokens=5, seed=t)  # noqa: E731
    assert _play(reuse, params, episodes=4) == _play(fresh, params, episodes=4)
    # A new episode joins a store full of old ones: it reuses only the shared opening.
    chat = [Message(role="system", content=RULES), Message(role="user", content="map 99: FFFFFFFFFFFH")]
    assert reuse.chat([chat], params(0))[0].text == fresh.chat([chat], params(0))[0].text


def test_shared_opening_is_prefilled_once_and_reused_by_every_row():
    _, reuse = _backends()
    chats = [[Message(role="system", content=RULES), Message(role="user", content=f"map {i}")] for i in range(4)]
    reuse.chat(chats, SamplingParams(temperature=0.0, max_new_tokens=2))
    store = reuse.prefix_store
    assert store.hits == 4
    assert any(e.shared for e in store.entries)
    head = len(reuse.encode(chats[0])) - len(reuse.encode([Message(role="user", content="map 0")]))
    assert store.reused_tokens >= 4 * head * 0.9


def _kv(n: int, value: float = 0.0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(torch.full((2, n, 4), value), torch.full((2, n, 4), value)) for _ in range(2)]


def test_lookup_longest_common_prefix_leaves_one_token_and_respects_minimum():
    store = PrefixKVStore(min_tokens=3)
    store.add(list(range(10)), _kv(10))
    store.add(list(range(5)) + [99, 98, 97], _kv(8))
    assert store.lookup(list(range(12))).length == 10
    assert store.lookup(list(range(10))).length == 9  # the last prompt token must be run
    assert store.lookup(list(range(5)) + [99, 0]).length == 6
    assert store.lookup([0, 1, 7]).length == 0  # 2 shared tokens < min_tokens
    assert store.lookup([5, 6, 7, 8]).entry is None


def test_superseded_entries_are_dropped_but_shared_openings_kept():
    store = PrefixKVStore(min_tokens=2)
    store.add([1, 2, 3], _kv(3), shared=True)
    head = store.lookup([1, 2, 3, 4, 5]).entry
    store.add([1, 2, 3, 4, 5, 6], _kv(6), supersedes=head)
    turn1 = store.lookup([1, 2, 3, 4, 5, 6, 7]).entry
    assert turn1 is not None and len(turn1.ids) == 6
    store.add([1, 2, 3, 4, 5, 6, 7, 8], _kv(8), supersedes=turn1)
    assert sorted(len(e.ids) for e in store.entries) == [3, 8]


def test_lru_eviction_keeps_within_byte_budget():
    per_token = _kv(1)[0][0].numel() * 4 * 2 * 2  # 2 layers x (k, v) fp32
    store = PrefixKVStore(max_bytes=per_token * 20, min_tokens=2)
    store.add([1] * 8, _kv(8))
    store.add([2] * 8, _kv(8))
    store.lookup([1] * 9)  # touch the first: the second is now least recently used
    store.add([3] * 8, _kv(8))
    assert store.nbytes <= per_token * 20
    assert sorted(int(e.ids[0]) for e in store.entries) == [1, 3]
    store.add([4] * 30, _kv(30))  # larger than the whole budget: not stored
    assert all(int(e.ids[0]) != 4 for e in store.entries)


def test_identical_prompts_of_one_call_are_computed_once_each_row_keeping_its_seed():
    """Rows with the same prompt (an evaluation map's sampling seeds): the repeats run after the first and
    reuse its stored prompt (one token left to run each); every row's answer is what it gets alone."""
    fresh, reuse = _backends()
    chats = [[Message(role="system", content=RULES), Message(role="user", content=f"map {i % 2}: FFFH")]
             for i in range(6)]
    params = SamplingParams(temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=6)
    seeds = [11, 12, 13, 14, 15, 16]
    got = [g.text for g in reuse.chat_with_seeds(chats, params, seeds)]
    assert got == [fresh.chat_with_seeds([c], params, [s])[0].text for c, s in zip(chats, seeds)]
    assert len(set(got)) > 2, "different seeds, different answers: each repeat sampled for itself"
    prompt = len(reuse.encode(chats[0]))
    repeats = 4
    assert reuse.prefix_store.reused_tokens >= repeats * (prompt - 1)
