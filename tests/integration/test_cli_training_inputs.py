"""Bad inputs and outputs of ``modelrouter train``, ``eval``, ``calibrate`` and ``route``.

Every output path is checked before any work (a run found unwritable only at its end
would have been wasted), no command overwrites its own input, a JSONL line that the JSON
parser refuses for its size or depth names its file and line, and Ctrl-C is one line and
exit code 130, not a traceback.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from router.cli import main
from router.model import load_model, save_model
from tests.integration.test_cli import assert_clean_error
from tests.unit.training.support import SAMPLE

# What the commands print once they start working: none may appear when a path is refused.
WORK_STARTED = ("featurized", "trained in", "APGR", "wrote")
FAST_TRAIN = ("--cv-folds", "0", "--buckets-log2", "8")


def modelrouter(*args: str | Path, stdin: int | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m router.cli ARGS`` and return what it did."""
    return subprocess.run(
        [sys.executable, "-m", "router.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=stdin,
        check=False,
    )


def refused_before_work(result: subprocess.CompletedProcess[str], *parts: str) -> None:
    """A clean one-line error naming ``parts``, printed before any training or scoring."""
    assert_clean_error(result, "", *parts)
    assert len(result.stderr.splitlines()) == 1, result.stderr
    for started in WORK_STARTED:
        assert started not in result.stderr


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model trained on the 300-row sample with the fastest settings."""
    path = tmp_path_factory.mktemp("model") / "m.npz"
    result = modelrouter("train", "--data", SAMPLE, "--out", path, *FAST_TRAIN)
    assert result.returncode == 0, result.stderr
    return path


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """A copy of the sample, to be (not) overwritten."""
    path = tmp_path / "data.jsonl"
    path.write_bytes(SAMPLE.read_bytes())
    return path


# -- an output is never the input ------------------------------------------------------------


def test_route_refuses_to_overwrite_its_input(model: Path, data: Path, tmp_path: Path) -> None:
    before = data.read_bytes()
    link = tmp_path / "link.jsonl"
    link.symlink_to(data)
    for output in (data, tmp_path / "." / "data.jsonl", link):
        result = modelrouter("route", "--input", data, "--output", output, "--model", model)
        refused_before_work(result, str(output), "--input")
        assert data.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.jsonl", "link.jsonl"]


def test_train_refuses_to_overwrite_its_data(data: Path) -> None:
    before = data.read_bytes()
    result = modelrouter("train", "--data", SAMPLE, "--data", f"{data}:2", "--out", data)
    refused_before_work(result, str(data), "--data")
    assert data.read_bytes() == before
    result = modelrouter(
        "train", "--data", data, "--out", data.with_name("m.npz"), "--report", data
    )
    refused_before_work(result, str(data), "--data")
    assert data.read_bytes() == before
    assert not data.with_name("m.npz").exists()


def test_calibrate_refuses_to_overwrite_its_data(model: Path, data: Path) -> None:
    before = data.read_bytes()
    args = ("calibrate", "--data", data, "--model", model, "--strong-share", "0.3")
    refused_before_work(modelrouter(*args, "--out", data), str(data), "--data")
    assert data.read_bytes() == before


def test_eval_refuses_to_overwrite_its_data(model: Path, data: Path) -> None:
    before = data.read_bytes()
    result = modelrouter("eval", "--data", data, "--model", model, "--json", data)
    refused_before_work(result, str(data), "--data")
    assert data.read_bytes() == before


# -- output paths are checked before the work ------------------------------------------------


@pytest.mark.parametrize(
    ("option", "name", "reason"),
    [
        ("--out", "missing/m.npz", "No such file or directory"),
        ("--out", "adir", "Is a directory"),
        ("--report", "missing/r.json", "No such file or directory"),
        ("--report", "adir", "Is a directory"),
        ("--plot", "missing/p.png", "No such file or directory"),
        ("--plot", "p.txt", "'.txt'"),
    ],
)
def test_train_checks_its_outputs_first(
    tmp_path: Path, option: str, name: str, reason: str
) -> None:
    (tmp_path / "adir").mkdir()
    path = tmp_path / name
    args: list[str | Path] = ["train", "--data", SAMPLE, *FAST_TRAIN, "--out", path]
    if option != "--out":
        args[-1] = tmp_path / "m.npz"
        args += [option, path]
    started = time.monotonic()
    result = modelrouter(*args)
    refused_before_work(result, str(path), reason)
    assert time.monotonic() - started < 15
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir"]
    assert list((tmp_path / "adir").iterdir()) == []


@pytest.mark.parametrize(
    ("option", "name", "reason"),
    [
        ("--json", "missing/r.json", "No such file or directory"),
        ("--json", "adir", "Is a directory"),
        ("--plot", "missing/p.png", "No such file or directory"),
        ("--plot", "adir.png", "Is a directory"),
        ("--plot", "p.txt", "'.txt'"),
    ],
)
def test_eval_checks_its_outputs_first(
    model: Path, tmp_path: Path, option: str, name: str, reason: str
) -> None:
    (tmp_path / "adir").mkdir()
    (tmp_path / "adir.png").mkdir()
    path = tmp_path / name
    result = modelrouter("eval", "--data", SAMPLE, "--model", model, option, path)
    refused_before_work(result, str(path), reason)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir", "adir.png"]


def test_eval_plot_without_an_extension_names_the_file_it_writes(
    model: Path, tmp_path: Path
) -> None:
    result = modelrouter("eval", "--data", SAMPLE, "--model", model, "--plot", tmp_path / "curve")
    assert result.returncode == 0, result.stderr
    written = tmp_path / "curve.png"
    assert result.stdout.rstrip().endswith(f"wrote {written}")
    assert written.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_a_write_that_fails_is_one_line(model: Path) -> None:
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    result = modelrouter("eval", "--data", SAMPLE, "--model", model, "--json", "/dev/full")
    assert result.returncode == 1, result.stderr
    assert result.stderr == "modelrouter: /dev/full: No space left on device\n"


@pytest.mark.parametrize("name", ["adir", "missing/m.npz"])
def test_calibrate_checks_its_out_first(model: Path, tmp_path: Path, name: str) -> None:
    (tmp_path / "adir").mkdir()
    out = tmp_path / name
    args = ("calibrate", "--data", SAMPLE, "--model", model, "--strong-share", "0.3")
    result = modelrouter(*args, "--out", out)
    refused_before_work(result, str(out))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir"]


def test_route_checks_its_output_first(model: Path, tmp_path: Path) -> None:
    (tmp_path / "adir").mkdir()
    for out in (tmp_path / "adir", tmp_path / "missing" / "o.jsonl"):
        result = modelrouter("route", "--input", SAMPLE, "--output", out, "--model", model)
        refused_before_work(result, str(out))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir"]


def test_save_model_leaves_no_temporary_file(model: Path, tmp_path: Path) -> None:
    (tmp_path / "adir").mkdir()
    with pytest.raises(IsADirectoryError):
        save_model(load_model(model), tmp_path / "adir")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir"]


def test_route_refuses_output_with_one_query(tmp_path: Path) -> None:
    out = tmp_path / "x.jsonl"
    result = modelrouter("route", "hello", "--output", out)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert "--output" in result.stderr and "--input" in result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert not out.exists()


# -- lines the JSON parser refuses -----------------------------------------------------------


@pytest.fixture(params=["huge integer", "deep nesting"])
def unparsable(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """Two good rows, then a line json.loads refuses with ValueError or RecursionError."""
    first = SAMPLE.read_text(encoding="utf-8").splitlines(keepends=True)[:2]
    if request.param == "huge integer":
        bad = '{"id": 1, "text": "x", "n": ' + "9" * 5000 + "}\n"
    else:
        bad = '{"id": 1, "text": "x", "n": ' + "[" * 100_000 + "]" * 100_000 + "}\n"
    path = tmp_path / "bad.jsonl"
    path.write_text("".join([*first, bad]), encoding="utf-8")
    return path


@pytest.mark.parametrize("command", ["train", "eval", "calibrate", "route"])
def test_a_line_json_refuses_names_file_and_line(
    model: Path, unparsable: Path, tmp_path: Path, command: str
) -> None:
    out = tmp_path / "out"
    args: dict[str, tuple[str | Path, ...]] = {
        "train": ("--data", unparsable, "--out", out, *FAST_TRAIN),
        "eval": ("--data", unparsable, "--model", model),
        "calibrate": ("--data", unparsable, "--model", model, "--strong-share", "0.3"),
        "route": ("--input", unparsable, "--output", out, "--model", model),
    }
    extra = ("--out", out) if command == "calibrate" else ()
    result = modelrouter(command, *args[command], *extra)
    assert_clean_error(result, f"{unparsable}:3: (line): not valid JSON (")
    assert not out.exists()


# -- training data without labels ------------------------------------------------------------


def test_train_needs_labels(tmp_path: Path) -> None:
    data = tmp_path / "notier.jsonl"
    rows = [json.loads(line) for line in SAMPLE.read_text(encoding="utf-8").splitlines()[:40]]
    data.write_text(
        "".join(json.dumps({**r, "tier": None, "scores": None}) + "\n" for r in rows), "utf-8"
    )
    out = tmp_path / "m.npz"
    result = modelrouter("train", "--data", data, "--out", out, *FAST_TRAIN)
    refused_before_work(result, str(data), "no row has outcome 'scores' or a 'tier'")
    assert not out.exists()


# -- rules files -----------------------------------------------------------------------------


def test_train_rules_not_utf8(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_bytes(b"version: 1\nrules:\n  - {name: caf\xe9, phrases: [a]}\n")
    out = tmp_path / "m.npz"
    result = modelrouter("train", "--data", SAMPLE, "--out", out, "--rules", rules, *FAST_TRAIN)
    refused_before_work(result, f"{rules}: not valid UTF-8")
    assert not out.exists()


def test_train_rules_nested_too_deeply(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("a: " + "[" * 5000 + "]" * 5000 + "\n", encoding="utf-8")
    out = tmp_path / "m.npz"
    result = modelrouter("train", "--data", SAMPLE, "--out", out, "--rules", rules, *FAST_TRAIN)
    refused_before_work(result, f"{rules}: not valid YAML")
    assert not out.exists()


# -- Ctrl-C ----------------------------------------------------------------------------------


def reading(pid: int, stdin_link: str, deadline: float) -> bool:
    """Return whether the process has opened its stdin pipe again (as --data/--input)."""
    while time.monotonic() < deadline:
        try:
            fds = [f for f in os.listdir(f"/proc/{pid}/fd") if int(f) > 2]
        except FileNotFoundError:  # the process is gone
            return False
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == stdin_link:
                    return True
            except FileNotFoundError:  # closed since listed (an import's file)
                pass
        time.sleep(0.02)
    return False


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
@pytest.mark.parametrize("command", ["train", "eval", "calibrate", "route"])
def test_ctrl_c_is_one_line_and_exit_130(model: Path, tmp_path: Path, command: str) -> None:
    out = tmp_path / "out"
    args: dict[str, tuple[str | Path, ...]] = {
        "train": ("--data", "/dev/stdin", "--out", out, *FAST_TRAIN),
        "eval": ("--data", "/dev/stdin", "--model", model),
        "calibrate": ("--data", "/dev/stdin", "--model", model, "--strong-share", "0.3"),
        "route": ("--input", "/dev/stdin", "--output", out, "--model", model),
    }
    extra = ("--out", out) if command == "calibrate" else ()
    with (tmp_path / "stderr").open("w+") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "router.cli", command, *map(str, args[command]), *extra],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        assert process.stdin is not None
        try:
            process.stdin.write(SAMPLE.read_bytes()[:2000].rpartition(b"\n")[0] + b"\n")
            process.stdin.flush()
            stdin_link = os.readlink(f"/proc/{process.pid}/fd/0")
            assert reading(process.pid, stdin_link, time.monotonic() + 15)
            process.send_signal(signal.SIGINT)
            code = process.wait(timeout=15)
        finally:
            process.stdin.close()
            process.kill()
            process.wait()
        stderr.seek(0)
        message = stderr.read()
    assert code == 130, message
    assert message.strip() == "modelrouter: interrupted", message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stderr"]


def test_ctrl_c_in_process(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The handler itself turns KeyboardInterrupt into exit code 130."""
    import router.training.train

    def interrupted(*_args: object, **_kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(router.training.train, "train", interrupted)
    out = tmp_path / "m.npz"
    assert main(["train", "--data", str(SAMPLE), "--out", str(out), *FAST_TRAIN]) == 130
    assert capsys.readouterr().err.strip() == "modelrouter: interrupted"
    assert not out.exists()
