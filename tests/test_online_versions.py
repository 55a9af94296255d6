"""Published versions: the current pointer, idempotent publish, rollback, retention, crash leftovers."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from oel.errors import ConfigError, DataError
from oel.layout import MARKER
from oel.online.versions import CURRENT_FILE, Versions, version_name


def _model_dir(path: Path, weights: bytes = b"w") -> Path:
    """A stand-in for a consolidated HF dir: publish only needs config.json, and copies every file."""
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    (path / "model.safetensors").write_bytes(weights)
    return path


def _current(d: Path) -> dict:
    return json.loads((d / CURRENT_FILE).read_text())


def test_base_then_publish_moves_current_to_a_complete_copy(tmp_path):
    versions = Versions(tmp_path / "versions")
    base = versions.ensure_base("some-preset")
    assert base.version == 0 and base.model_dir == "some-preset"
    assert _current(versions.dir)["version"] == 0

    v1 = versions.publish(_model_dir(tmp_path / "out1", b"one"), round=0, metrics={"loss": 1.0}, verdict={"passed": True})
    cur = _current(versions.dir)
    assert (v1.version, v1.parent, cur["version"]) == (1, 0, 1)
    assert cur["model_dir"] == str(versions.dir / "v0001" / "model") and Path(cur["model_dir"]).is_absolute()
    assert (Path(cur["model_dir"]) / "model.safetensors").read_bytes() == b"one"
    assert (versions.dir / "v0001" / MARKER).is_file()
    saved = json.loads((versions.dir / "v0001" / "version.json").read_text())
    assert saved["round"] == 0 and saved["metrics"] == {"loss": 1.0} and saved["verdict"] == {"passed": True}
    assert [v.version for v in versions.list()] == [0, 1]


def test_base_model_dir_is_absolute_when_it_is_a_path(tmp_path):
    model = _model_dir(tmp_path / "base")
    assert Versions(tmp_path / "v").ensure_base(str(model)).model_dir == str(model.absolute())


def test_publishing_the_same_round_again_returns_its_version(tmp_path):
    versions = Versions(tmp_path / "versions")
    versions.ensure_base("base")
    first = versions.publish(_model_dir(tmp_path / "a"), round=3)
    again = versions.publish(_model_dir(tmp_path / "b"), round=3)
    assert again.version == first.version == 1
    assert [v.version for v in versions.list()] == [0, 1]
    assert [r["event"] for r in versions.history()] == ["base", "publish"]


def test_a_kill_between_completing_a_version_and_moving_current_is_finished_on_republish(tmp_path):
    versions = Versions(tmp_path / "versions")
    versions.ensure_base("base")
    v1 = versions.publish(_model_dir(tmp_path / "a"), round=0)
    # simulate the kill: current still names v0 and the history has no publish of v1
    versions._point_current(0, event="base")
    lines = [r for r in versions.history() if r["event"] != "publish"]
    versions.history_file.write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert versions.publish(_model_dir(tmp_path / "b"), round=0).version == v1.version
    assert _current(versions.dir)["version"] == 1


def test_incomplete_version_dirs_are_never_current_and_are_cleared(tmp_path):
    versions = Versions(tmp_path / "versions")
    versions.ensure_base("base")
    torn = versions.dir / version_name(1) / "model"
    torn.mkdir(parents=True)  # a kill mid-copy: no marker
    assert [v.version for v in versions.list()] == [0]
    with pytest.raises(DataError, match="version 1 does not exist"):
        versions.get(1)
    v = versions.publish(_model_dir(tmp_path / "a", b"new"), round=0)
    assert v.version == 1 and (Path(v.model_dir) / "model.safetensors").read_bytes() == b"new"


def test_rollback_moves_current_back_and_is_recorded(tmp_path):
    versions = Versions(tmp_path / "versions")
    versions.ensure_base("base")
    for r in range(2):
        versions.publish(_model_dir(tmp_path / f"m{r}"), round=r)
    assert versions.rollback(1).version == 1
    assert _current(versions.dir)["version"] == 1
    assert versions.history()[-1] == {**versions.history()[-1], "event": "rollback", "version": 1, "previous": 2}
    with pytest.raises(DataError, match="not earlier"):
        versions.rollback(1)
    with pytest.raises(DataError, match="version 7 does not exist"):
        versions.rollback(7)
    # restore undoes a rollback, and only goes forward
    with pytest.raises(DataError, match="not later than the current version 1"):
        versions.restore(0)
    assert versions.restore(2).version == 2 and _current(versions.dir)["version"] == 2
    assert versions.history()[-1] == {**versions.history()[-1], "event": "restore", "version": 2, "previous": 1}
    versions.rollback(1)
    # the next version's parent is the version rolled back to
    assert versions.publish(_model_dir(tmp_path / "m2"), round=2).parent == 1


def test_retention_keeps_the_newest_the_base_and_current(tmp_path):
    versions = Versions(tmp_path / "versions", keep_last=2)
    versions.ensure_base("base")
    versions.publish(_model_dir(tmp_path / "m0"), round=0)
    versions.publish(_model_dir(tmp_path / "m1"), round=1)
    versions.rollback(1)
    versions.publish(_model_dir(tmp_path / "m2"), round=2)  # v3: v1 is beyond the newest 2 and no longer current
    assert [v.version for v in versions.list()] == [0, 2, 3]
    versions.rollback(2)
    versions.publish(_model_dir(tmp_path / "m3"), round=3)  # v4 becomes current, so v2 goes
    assert [v.version for v in versions.list()] == [0, 3, 4]
    assert any(r["event"] == "delete" and r["version"] == 1 for r in versions.history())
    with pytest.raises(DataError, match="deleted by retention"):
        versions.rollback(1)


def test_retention_never_deletes_the_current_version(tmp_path):
    versions = Versions(tmp_path / "versions", keep_last=1)
    versions.ensure_base("base")
    versions.publish(_model_dir(tmp_path / "m0"), round=0)
    versions.publish(_model_dir(tmp_path / "m1"), round=1)
    versions.rollback(0)
    assert versions.apply_retention() == []
    assert [v.version for v in versions.list()] == [0, 2]
    with pytest.raises(ConfigError, match="keep_last"):
        Versions(tmp_path / "x", keep_last=-1)


def test_a_torn_history_line_does_not_swallow_the_next_row(tmp_path):
    versions = Versions(tmp_path / "versions")
    versions.ensure_base("base")
    with open(versions.history_file, "a") as f:
        f.write('{"event": "pub')
    versions.publish(_model_dir(tmp_path / "m0"), round=0)
    assert [r["event"] for r in versions.history()] == ["base", "publish"]


def test_not_a_model_dir_publishes_nothing(tmp_path):
    versions = Versions(tmp_path / "versions")
    versions.ensure_base("base")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no config.json"):
        versions.publish(tmp_path / "empty", round=0)
    assert _current(versions.dir)["version"] == 0


def test_versions_are_their_owners_only(tmp_path):
    """A version is a model trained on users' conversations: folders 0700, files 0600, whatever the umask."""
    old = os.umask(0o022)
    try:
        versions = Versions(tmp_path / "versions")
        versions.ensure_base("some-preset")
        src = _model_dir(tmp_path / "out1")
        (src / "tokenizer").mkdir()
        (src / "tokenizer" / "vocab.json").write_text("{}")
        versions.publish(src, round=0)
    finally:
        os.umask(old)
    d = versions.dir
    for folder in (d, d / "v0000", d / "v0001", d / "v0001" / "model", d / "v0001" / "model" / "tokenizer"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    for path in (d / CURRENT_FILE, d / "history.jsonl", d / "v0001" / "version.json", d / "v0001" / MARKER):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
