"""Every CLI command that reads or writes files, fed each kind of bad input a new user gives it.

Each case runs the real `oel` command (in process, as the console script does) and asserts
what a user must see: exit code 2, exactly one line `oel: error: ...` naming the file or the
config key, no traceback, and no file or folder left behind. Nothing here loads a model:
every bad path is refused before one would be loaded, which is the point.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from oel.cli import main
from oel.trajectory import Message, Trajectory, Turn, write_trajectories

BAD_FILES = {
    "binary": "bad/binary.bin",
    "non-utf8": "bad/latin1.txt",
    "directory": "bad/a_directory",
    "missing": "bad/no/such/file.jsonl",
}
"""A bad input of each kind, relative to the work directory (see `workdir`)."""

# Commands that READ a file; `{f}` is replaced by the bad file. The other arguments are valid
# (see `workdir`), so the bad file is the only thing wrong.
READERS = [
    "import-logs {f} out.jsonl",
    "collect {f}",
    "collect knowledge_file={f} num_seeds=1 out=o/t.jsonl",
    "extract trajectories={f} out_dir=o/x num_trajectories=1",
    "consolidate trajectories={f} knowledge=[k.txt] output_dir=o/c",
    "consolidate trajectories=t.jsonl knowledge=[{f}] output_dir=o/c",
    "evaluate knowledge_file={f} out_dir=o/e",
    "evaluate {f}",
    "meter knowledge_file={f} out=o/m.json",
    "loop {f}",
    "loop knowledge_file={f} run_dir=o/r",
    "experience show {f}",
    "experience diff {f} {f}",
    "experience curve {f}",
    "report {f}",
    "serve {f}",
    "gateway {f}",
    "online run {f}",
    "online status {f}",
    "online demo {f}",
    "online export {f} out.jsonl",
    "online versions {f}",
    "online rollback {f} 0",
    "online restore {f} 1",
]

# Commands given an OUTPUT path that cannot be written: a directory where a file goes, or a
# file where a directory goes.
WRITERS = [
    "import-logs chats.jsonl bad/a_directory",
    "collect num_seeds=1 out=bad/a_directory",
    "collect num_seeds=1 out=k.txt/t.jsonl",
    "extract trajectories=t.jsonl out_dir=k.txt num_trajectories=1",
    "consolidate trajectories=t.jsonl knowledge=[k.txt] output_dir=k.txt",
    "evaluate out_dir=k.txt",
    "meter knowledge_file=k.txt out=bad/a_directory",
    "loop run_dir=k.txt",
    "experience curve store=o/s out_dir=k.txt",
]

BAD_MODELS = ["./no/such/model", "/no/such/model", "no_such.gguf", "someorg/no-such-model", "k.txt"]
"""A relative and an absolute missing path, a missing .gguf, a hub id on an offline machine, a file."""

# Commands that load a model; `{m}` is the bad model name.
MODEL_LOADERS = [
    "collect model.name={m} num_seeds=1 out=o/t.jsonl",
    "evaluate model.name={m} out_dir=o/e",
    "consolidate model.name={m} trajectories=t.jsonl knowledge=[k.txt] output_dir=o/c",
    "consolidate teacher_model={m} trajectories=t.jsonl knowledge=[k.txt] output_dir=o/c",
    "meter model.name={m} knowledge_file=k.txt",
    "extract extractor.model.name={m} trajectories=t.jsonl out_dir=o/x num_trajectories=1",
    "serve model.name={m} port=0",
    "loop model.name={m} run_dir=o/r",
]


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A work directory with valid inputs (t.jsonl, k.txt, chats.jsonl) and the bad ones."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OEL_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    bad = tmp_path / "bad"
    (bad / "a_directory").mkdir(parents=True)
    (bad / "binary.bin").write_bytes(b"\x00\x01\x02\xff\xfe binary" * 16)
    (bad / "latin1.txt").write_bytes('{"a": "café"}\n'.encode("latin-1"))
    turn = Turn(prompt=[Message(role="user", content="the board")], observation="the board", response="[up]")
    write_trajectories(tmp_path / "t.jsonl", [Trajectory(id="a", env_id="FrozenLake-v0-raw", seed=1, model_id="m",
                                                         turns=[turn], outcome="failure", passed=False)])
    (tmp_path / "k.txt").write_text("- a lesson\n")
    chat = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    (tmp_path / "chats.jsonl").write_text(json.dumps(chat) + "\n")
    return tmp_path


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    code = main(args)
    err = capsys.readouterr().err
    return code, [line for line in err.splitlines() if line.strip()]


def assert_one_line_error(workdir: Path, args: list[str], capsys: pytest.CaptureFixture[str], names: str) -> None:
    before = tree(workdir)
    code, lines = run_cli(args, capsys)
    assert code == 2, (args, code, lines)
    assert len(lines) == 1 and lines[0].startswith("oel: error: "), (args, lines)
    assert "Traceback" not in lines[0]
    assert names in lines[0], (args, lines[0])
    assert tree(workdir) == before, (args, tree(workdir) - before)


@pytest.mark.parametrize("kind", list(BAD_FILES))
@pytest.mark.parametrize("command", READERS)
def test_bad_input_file(workdir: Path, capsys: pytest.CaptureFixture[str], command: str, kind: str) -> None:
    bad = BAD_FILES[kind]
    assert_one_line_error(workdir, command.format(f=bad).split(), capsys, names=bad)


@pytest.mark.parametrize("command", WRITERS)
def test_unwritable_output(workdir: Path, capsys: pytest.CaptureFixture[str], command: str) -> None:
    target = next(a.split("=", 1)[-1] for a in reversed(command.split()) if "k.txt" in a or "a_directory" in a)
    assert_one_line_error(workdir, command.split(), capsys, names=target)


# Commands given an output under a folder nobody may write in; `{ro}` is that folder.
READ_ONLY_WRITERS = [
    "extract trajectories=t.jsonl out_dir={ro}/x num_trajectories=1",
    "consolidate trajectories=t.jsonl knowledge=[k.txt] output_dir={ro}/c",
    "meter knowledge_file=k.txt out={ro}/m.json",
    "evaluate out_dir={ro}/e",
    "collect num_seeds=1 out={ro}/t.jsonl",
    "import-logs chats.jsonl {ro}/out.jsonl",
    "loop run_dir={ro}/r",
]
FAIL_FAST_S = 5.0


def _can_create_in(folder: Path) -> bool:
    try:
        (folder / ".probe").touch()
    except OSError:
        return False
    (folder / ".probe").unlink()
    return True


@pytest.fixture
def read_only_dir(workdir: Path) -> Iterator[Path]:
    """A folder this process cannot create files in: mode 0555, or (root ignores modes) /sys."""
    ro = workdir / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if _can_create_in(ro):
            ro = Path("/sys")
            if not Path("/sys").is_dir() or _can_create_in(ro):
                pytest.skip("no folder this process cannot write in")
        yield ro
    finally:
        (workdir / "ro").chmod(0o755)


@pytest.mark.parametrize("command", READ_ONLY_WRITERS)
def test_output_in_a_read_only_place_fails_fast_before_any_model_loads(
        workdir: Path, read_only_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        command: str) -> None:
    import oel.models.load

    def no_loading(*_a: object, **_k: object) -> None:
        raise AssertionError("a model was loaded before the output was checked")

    monkeypatch.setattr(oel.models.load, "resolve_device", no_loading)  # the first step of every load
    start = time.monotonic()
    assert_one_line_error(workdir, command.format(ro=read_only_dir).split(), capsys, names=str(read_only_dir))
    assert time.monotonic() - start < FAIL_FAST_S


def test_extract_with_too_few_trajectories_fails_before_the_extractor_loads(
        workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import oel.models.load

    monkeypatch.setattr(oel.models.load, "resolve_device", lambda *a, **k: pytest.fail("extractor loaded"))
    assert_one_line_error(workdir, "extract trajectories=t.jsonl out_dir=o/x num_trajectories=5".split(), capsys,
                          names="need num_trajectories=5, found 1")


@pytest.mark.parametrize("model", BAD_MODELS)
@pytest.mark.parametrize("command", MODEL_LOADERS)
def test_bad_model_name(workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                        command: str, model: str) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # an offline machine, whatever this one can reach
    assert_one_line_error(workdir, command.format(m=model).split(), capsys, names=model)


def test_the_console_script_prints_one_line_and_a_traceback_only_with_verbose(workdir: Path) -> None:
    """The installed `oel` entry point, as a user runs it, with and without -v."""
    cmd = [sys.executable, "-m", "oel", "import-logs", BAD_FILES["binary"], "out.jsonl"]
    env = {**os.environ, "PYTHONWARNINGS": "error::DeprecationWarning"}
    quiet = subprocess.run(cmd, capture_output=True, text=True, cwd=workdir, env=env)
    assert quiet.returncode == 2
    assert quiet.stderr.strip().splitlines() == [
        f"oel: error: {BAD_FILES['binary']}:1: binary data (a NUL byte), expected log file as UTF-8 text"]
    assert not (workdir / "out.jsonl").exists()


def test_unanticipated_os_errors_are_one_line_and_verbose_shows_the_traceback(
        workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """An OSError no reader turned into a DataError still reaches the user as one line."""
    import oel.collect.logs_cli

    def failing_import(*_a: object, **_k: object) -> None:
        raise OSError(5, "Input/output error", "chats.jsonl")

    monkeypatch.setattr(oel.collect.logs_cli, "import_logs", failing_import)  # the name `oel import-logs` calls
    code, lines = run_cli(["import-logs", "chats.jsonl", "out.jsonl"], capsys)
    assert (code, lines) == (2, ["oel: error: chats.jsonl: Input/output error"])
    with pytest.raises(OSError):
        main(["-v", "import-logs", "chats.jsonl", "out.jsonl"])
