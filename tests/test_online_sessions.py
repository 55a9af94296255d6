"""Stitching exchanges into conversations and conversations into trajectories (oel.sessions).

Checked against brute force: a reference that compares message lists literally (no keys, no
index) on every small random case, and simulated agents (continue, retry, rewind, rewrite,
interleaved) whose true conversation the stitched one must reproduce.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest

from oel.sessions import (
    Exchange,
    build_trajectory,
    conversation_key,
    parse_messages,
    prefix_keys,
    session_path,
    session_turns,
    stitch,
)
from oel.trajectory import Message, parse_trajectory

RANDOM_CASES = 400
SYSTEM = Message(role="system", content="you are an agent")


def user(text: str) -> Message:
    return Message(role="user", content=text)


def ex(messages: list[Message] | tuple[Message, ...], response: str) -> Exchange:
    return Exchange(tuple(messages), response)


# ---- parsing and keys ---------------------------------------------------------------------------


def test_parse_messages_names_the_bad_field() -> None:
    assert parse_messages([{"role": "user", "content": "hi"}]) == (user("hi"),)
    with pytest.raises(ValueError, match=r"^messages\[1\]\.role: "):
        parse_messages([{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}])
    with pytest.raises(ValueError, match=r"^messages\[0\]\.content: "):
        parse_messages([{"role": "user"}])
    with pytest.raises(ValueError, match=r"^messages: prompt must end with a user message"):
        parse_messages([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])
    with pytest.raises(ValueError, match=r"^messages: expected a list"):
        parse_messages("hello")


def test_prefix_keys_are_the_keys_of_the_prefixes_ending_with_an_answer() -> None:
    rng = random.Random(0)
    for _ in range(RANDOM_CASES):
        n = rng.randrange(1, 6)
        msgs = [Message(role="user" if i % 2 == 0 else "assistant", content=rng.choice(["a", "b", "a\nb", '"'])) for i in range(2 * n - 1)]
        want = [conversation_key(msgs[:j]) for j in range(len(msgs), 0, -1) if msgs[j - 1].role == "assistant"]
        assert prefix_keys(msgs) == want


def test_keys_do_not_confuse_content_boundaries() -> None:
    # a newline or a quote inside a message must not make two different lists collide
    a = [user("x\n"), Message(role="assistant", content="y")]
    b = [user("x"), Message(role="assistant", content="\ny")]
    assert conversation_key(a) != conversation_key(b)
    assert conversation_key([user('a", "user')]) != conversation_key([user("a"), user("")])


# ---- stitching: brute-force reference -------------------------------------------------------------


def stitch_reference(exchanges: list[Exchange]) -> list[list[int]]:
    """Literal list comparison against every earlier exchange: longest match, latest, oldest conversation."""
    convs: list[list[int]] = []
    for i, e in enumerate(exchanges):
        best = None
        for c, conv in enumerate(convs):
            for j in conv:
                tail = exchanges[j].tail
                if len(e.messages) > len(tail) and e.messages[: len(tail)] == tail:
                    rank = (-len(tail), j != conv[-1], c)
                    best = rank if best is None or rank < best else best
        if best is None:
            convs.append([i])
        else:
            convs[best[2]].append(i)
    return convs


def random_exchanges(rng: random.Random, n: int) -> list[Exchange]:
    """Tiny alphabets, so that matches, ties and identical conversations are frequent."""
    out: list[Exchange] = []
    for _ in range(n):
        if out and rng.random() < 0.7:
            base = list(rng.choice(out).tail)
            if rng.random() < 0.2 and len(base) >= 3:
                base = base[: rng.randrange(1, len(base) // 2 + 1) * 2]  # an earlier point of that conversation
            msgs = base + [user(rng.choice("xy"))]
        else:
            msgs = ([SYSTEM] if rng.random() < 0.5 else []) + [user(rng.choice("pq"))]
        out.append(ex(msgs, rng.choice("ab")))
    return out


def test_stitch_equals_the_brute_force_reference() -> None:
    rng = random.Random(1)
    for _ in range(RANDOM_CASES):
        exchanges = random_exchanges(rng, rng.randrange(1, 9))
        assert stitch(exchanges) == stitch_reference(exchanges)


def test_interleaved_agents_are_stitched_into_their_own_conversations() -> None:
    rng = random.Random(2)
    for case in range(RANDOM_CASES // 4):
        agents = [[SYSTEM, user(f"task {case}.{a}")] for a in range(rng.randrange(2, 5))]
        truth: list[list[int]] = [[] for _ in agents]
        exchanges: list[Exchange] = []
        for step in range(rng.randrange(4, 16)):
            a = rng.randrange(len(agents))
            exchanges.append(ex(agents[a], f"answer {step}"))
            truth[a].append(len(exchanges) - 1)
            agents[a] = [*exchanges[-1].tail, user(f"feedback {step}")]
        assert sorted(stitch(exchanges)) == sorted(t for t in truth if t)


def test_agents_with_identical_histories_get_equal_conversations() -> None:
    """Identical starts are indistinguishable; the stitched conversations still have the true contents."""
    rng = random.Random(3)
    for _ in range(RANDOM_CASES // 2):
        agents = [[SYSTEM, user("same task")] for _ in range(rng.randrange(2, 4))]
        truth: list[list[Exchange]] = [[] for _ in agents]
        exchanges: list[Exchange] = []
        for _ in range(rng.randrange(2, 10)):
            a = rng.randrange(len(agents))
            exchanges.append(ex(agents[a], rng.choice("ab")))
            truth[a].append(exchanges[-1])
            agents[a] = [*exchanges[-1].tail, user(rng.choice("xy"))]
        stitched = [tuple(exchanges[i] for i in conv) for conv in stitch(exchanges)]
        assert Counter(stitched) == Counter(tuple(t) for t in truth if t)


def test_rewritten_history_starts_a_new_conversation() -> None:
    first = ex([SYSTEM, user("q1")], "a1")
    follow = ex([*first.tail, user("q2")], "a2")
    rewritten = ex([SYSTEM, user("q1"), Message(role="assistant", content="an edited a1"), user("q2")], "a2'")
    again = ex([*follow.tail, user("q3")], "a3")
    assert stitch([first, follow, rewritten, again]) == [[0, 1, 3], [2]]


# ---- the session path and its turns ----------------------------------------------------------------


def simulate_agent(rng: random.Random, steps: int) -> tuple[list[Exchange], list[int], dict[int, str]]:
    """An agent that continues, retries its last request, rewinds, or rewrites its history.

    Returns the exchanges, the agent's true path, and the feedback it gave each exchange on it.
    """
    exchanges: list[Exchange] = []
    path: list[int] = []
    fed: dict[int, str] = {}
    counter = iter(range(10**6))

    def send(messages: list[Message]) -> int:
        exchanges.append(ex(messages, f"r{next(counter)}"))
        return len(exchanges) - 1

    for _ in range(steps):
        op = rng.choice(["continue", "continue", "retry", "rewind", "rewrite"]) if path else "start"
        if op == "start":
            path.append(send([SYSTEM, user(f"u{next(counter)}")]))
        elif op == "continue" or (op == "rewind" and len(path) < 2):
            text = f"u{next(counter)}"
            fed[path[-1]] = text
            path.append(send([*exchanges[path[-1]].tail, user(text)]))
        elif op == "retry":
            path[-1] = send(list(exchanges[path[-1]].messages))
        elif op == "rewind":
            k = rng.randrange(len(path) - 1)
            text = f"u{next(counter)}"
            fed[path[k]] = text
            path = [*path[: k + 1], send([*exchanges[path[k]].tail, user(text)])]
        else:  # rewrite: a summary of the history, sharing no prefix with anything sent before
            text = f"u{next(counter)}"
            fed[path[-1]] = text
            path.append(send([SYSTEM, user(f"summary {next(counter)}"), Message(role="assistant", content="ok"), user(text)]))
    return exchanges, path, fed


def test_session_path_is_the_path_the_agent_ended_on() -> None:
    rng = random.Random(4)
    for _ in range(RANDOM_CASES):
        exchanges, path, fed = simulate_agent(rng, rng.randrange(1, 12))
        assert session_path(exchanges) == path
        turns = session_turns(exchanges)
        assert [t.response for t in turns] == [exchanges[i].response for i in path]
        assert [t.feedback for t in turns] == [fed.get(i, "") for i in path[:-1]] + [""]


def test_turns_by_hand() -> None:
    a = ex([SYSTEM, user("board 1")], "[up]")
    retry = ex([SYSTEM, user("board 1")], "[down]")
    b = ex([*retry.tail, user("board 2")], "[left]")
    window = ex([SYSTEM, user("board 2"), Message(role="assistant", content="[left]"), user("board 3")], "[right]")
    turns = session_turns([a, retry, b, window])
    assert [t.response for t in turns] == ["[down]", "[left]", "[right]"]
    assert [t.observation for t in turns] == ["board 1", "board 2", "board 3"]
    assert [t.feedback for t in turns] == ["board 2", "board 3", ""]


def test_build_trajectory_is_a_valid_trajectory() -> None:
    a = ex([user("q")], "r1")
    b = Exchange((*a.tail, user("fb")), "r2", model_id="v2", prompt_tokens=5, response_tokens=2)
    traj = build_trajectory([a, b], trajectory_id="online-1", outcome="solved", seed=1, meta={"client": "c"})
    assert parse_trajectory(traj.model_dump(mode="json")) == traj
    assert (traj.source, traj.passed, traj.model_id, traj.env_id) == ("online", False, "unknown", "online")
    assert traj.meta["online"] == {"client": "c", "passed_reported": False, "model_ids": ["unknown", "v2"],
                                   "exchanges": 2, "turns_on_path": 2}
    assert traj.turns[1].response_tokens == 2
    assert build_trajectory([a], trajectory_id="t", outcome="", passed=True).passed is True
    with pytest.raises(ValueError, match="no exchange"):
        build_trajectory([], trajectory_id="t", outcome="")
