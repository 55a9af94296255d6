"""The custom-environment example in docs/environments.md runs and satisfies the protocol."""

from __future__ import annotations

import re
from pathlib import Path

from oel.envs import TextEnv

DOC = Path(__file__).resolve().parents[1] / "docs" / "environments.md"


def load_example() -> type:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.DOTALL)
    code = next(b for b in blocks if "class Corridor" in b)
    namespace: dict = {}
    exec(compile(code, str(DOC), "exec"), namespace)
    return namespace["Corridor"]


def test_docs_example_is_a_working_text_env() -> None:
    env = load_example()(length=2)
    assert isinstance(env, TextEnv)
    assert "cell 0" in env.reset(7)
    first = env.step("<think>hmm</think>[d]")
    assert not first.done and first.action == "[right]" and "cell 1" in first.observation
    last = env.step("[right]")
    assert last.done and last.passed and last.outcome.startswith("Success")
    env.reset(8)
    results = [env.step("[left]") for _ in range(5)]
    assert results[-1].done and not results[-1].passed
