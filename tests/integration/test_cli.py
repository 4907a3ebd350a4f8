"""The real ``modelrouter`` command in subprocesses: train, eval, calibrate, route, bad inputs."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from router.cli import main
from router.config import DEFAULT_CONFIG_YAML, load_config
from router.fastpath import FEATURIZER_VERSION
from router.model import RouterModel, load_model, save_model
from router.routing import Router
from router.training.data import read_rows
from router.training.train import files_digest, train
from tests.model_files import read_raw, write_raw
from tests.unit.training.support import SAMPLE, TIERS, quiet, small_options

ROUTE_KEYS = ["id", "tier", "tier_index", "score", "levels", "rules"]


def modelrouter(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m router.cli ARGS`` and return what it did."""
    return subprocess.run(
        [sys.executable, "-m", "router.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        check=False,
    )


def assert_clean_error(result: subprocess.CompletedProcess[str], prefix: str, *parts: str) -> None:
    """Exit code 1, nothing on stdout, one ``modelrouter: ...`` message, no traceback."""
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    assert result.stderr.startswith(f"modelrouter: {prefix}"), result.stderr
    assert "Traceback" not in result.stderr
    for part in parts:
        assert part in result.stderr


@dataclass(frozen=True)
class Trained:
    path: Path
    report: Path
    result: subprocess.CompletedProcess[str]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """``modelrouter train`` on the 300-row sample: 2 folds, 2**10 buckets."""
    out = tmp_path_factory.mktemp("train")
    model, report = out / "m.npz", out / "report.json"
    result = modelrouter(
        "train",
        "--data",
        SAMPLE,
        "--out",
        model,
        "--cv-folds",
        "2",
        "--buckets-log2",
        "10",
        "--report",
        report,
    )
    assert result.returncode == 0, result.stderr
    return Trained(model, report, result)


@pytest.fixture(scope="module")
def calibrated(trained: Trained) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """``modelrouter calibrate --strong-share 0.3 --out`` on the trained model."""
    out = trained.path.with_name("m2.npz")
    result = modelrouter(
        "calibrate",
        "--data",
        SAMPLE,
        "--model",
        trained.path,
        "--strong-share",
        "0.3",
        "--out",
        out,
    )
    assert result.returncode == 0, result.stderr
    return out, result


def above_cheapest_share(model: Path | RouterModel) -> float:
    router = Router.load(model) if isinstance(model, Path) else Router(model)
    rows = read_rows(SAMPLE)
    return sum(router.route(r.text).tier_index > 0 for r in rows) / len(rows)


# -- train -----------------------------------------------------------------------------------


def test_train_writes_the_model_and_the_report(trained: Trained) -> None:
    model = load_model(trained.path)
    assert trained.result.stdout.rstrip().endswith(f"wrote {trained.path} ({model.version})")
    assert "outcomes [all]: 140 rows" in trained.result.stdout
    # --report holds each source out first, and says so first.
    assert trained.result.stdout.startswith("leave-one-source-out (")
    assert trained.result.stdout.index("leave-one") < trained.result.stdout.index("outcomes [all]")
    assert "trained in" in trained.result.stderr  # progress goes to stderr
    assert model.spec.buckets_log2 == 10
    assert (model.spec.char_min, model.spec.char_max) == (3, 3)  # the default byte n-grams
    assert model.tier_names == TIERS
    assert "cross_validation" in model.info
    report = json.loads(trained.report.read_text())
    assert next(iter(report)) == "held_out_sources"
    assert len(report["held_out_sources"]["sources"]) == 6  # the sample has no nq_open
    assert report["model_version"] == "model (2-fold cross-validation)"
    assert report["rows"] == 300
    assert "curve" not in report["outcomes"][0]
    assert set(report["outcomes"][0]) >= {"model", "random", "oracle", "operating_point"}


def test_the_command_trains_what_the_library_trains(trained: Trained) -> None:
    """Deterministic across processes: the same data and settings give the same checksum."""
    model, _ = train(
        read_rows(SAMPLE),
        small_options(),
        folds=2,
        target=None,
        tier_names=TIERS,
        top_share=None,
        log=quiet,
        data_digest=files_digest([SAMPLE]),
        by_source=True,
    )
    again = save_model(model, trained.path.with_name("in-process.npz"))
    assert again.checksum == load_model(trained.path).checksum


def test_train_by_source(tmp_path: Path) -> None:
    """--by-source routes each source with a model trained without it (two sources here)."""
    lines = SAMPLE.read_text(encoding="utf-8").splitlines(keepends=True)
    picked = [line for line in lines if json.loads(line)["source"] in {"clinc150", "math"}]
    data = tmp_path / "two.jsonl"
    data.write_text("".join(picked), encoding="utf-8")
    out = tmp_path / "m.npz"
    args = ("train", "--data", data, "--out", out, "--cv-folds", "0", "--buckets-log2", "8")
    result = modelrouter(*args, "--by-source")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("leave-one-source-out (")
    assert lines[1].split()[:3] == ["held-out", "source", "rows"]
    assert lines[2].split()[:2] == ["clinc150", "45"]
    assert lines[3].split()[:2] == ["math", "25"]
    assert lines[4].startswith("pooled over 70 held-out scores: AUC level 2+ vs 0-1 ")
    assert out.exists()


def test_train_with_other_rules(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "version: 1\nrules:\n  - {name: refund, level: 1, phrases: [refund]}\n", encoding="utf-8"
    )
    out = tmp_path / "m.npz"
    args = ("train", "--data", SAMPLE, "--out", out, "--cv-folds", "0", "--buckets-log2", "8")
    result = modelrouter(*args, "--rules", rules)
    assert result.returncode == 0, result.stderr
    assert load_model(out).rule_names == ("refund",)
    assert Router.load(out).route("I want a refund").rules == ("refund",)


def test_train_rejects_a_bad_rules_file(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("version: 1\nrules:\n  - {name: x, level: 7, phrases: [a]}\n", "utf-8")
    out = tmp_path / "m.npz"
    result = modelrouter("train", "--data", SAMPLE, "--out", out, "--rules", rules)
    assert_clean_error(result, f"{rules}: rules[0].level: must be an integer 0-4 or absent")
    assert not out.exists()


@pytest.mark.parametrize(
    ("option", "value", "bound"),
    [
        ("--length-weight", "-0.1", "at least 0"),
        ("--length-weight", "nan", "at least 0"),
        ("--length-weight", "inf", "at least 0"),
        ("--gain-alpha", "0", "above 0"),
        ("--level-c", "-1", "above 0"),
        ("--gate-c", "nan", "above 0"),
        ("--outcome-spread", "zero", "not a number"),
        ("--char-max", "9", "an integer in 3..8"),
        ("--char-max", "2", "an integer in 3..8"),
        ("--char-max", "", "an integer in 3..8"),
        ("--char-max", "four", "an integer in 3..8"),
    ],
)
def test_train_refuses_a_fitting_option_out_of_range(
    tmp_path: Path, option: str, value: str, bound: str
) -> None:
    out = tmp_path / "m.npz"
    result = modelrouter("train", "--data", SAMPLE, "--out", out, option, value)
    assert result.returncode == 2, result.stderr
    assert f"argument {option}: {value!r} is not" in result.stderr
    assert bound in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()


def test_train_stops_at_a_malformed_row_and_writes_nothing(tmp_path: Path) -> None:
    lines = SAMPLE.read_text(encoding="utf-8").splitlines(keepends=True)
    bad_row = json.dumps({"id": "bad", "text": "fine", "tier": "three"}) + "\n"
    data = tmp_path / "bad.jsonl"
    data.write_text("".join([*lines[:150], bad_row, *lines[150:]]), encoding="utf-8")
    out = tmp_path / "m.npz"
    out.write_bytes(b"the previous model")
    result = modelrouter("train", "--data", data, "--out", out, "--buckets-log2", "8")
    assert_clean_error(result, f"{data}:151: tier: must be null or an integer 0-4, got 'three'")
    assert out.read_bytes() == b"the previous model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "m.npz"]


# -- eval ------------------------------------------------------------------------------------


def test_eval_prints_writes_json_and_plots(trained: Trained, tmp_path: Path) -> None:
    plot, report_path = tmp_path / "curve.png", tmp_path / "r.json"
    result = modelrouter(
        "eval", "--data", SAMPLE, "--model", trained.path, "--plot", plot, "--json", report_path
    )
    assert result.returncode == 0, result.stderr
    model = load_model(trained.path)
    assert result.stdout.startswith(f"model {model.version}: tiers cheap, strong, expert")
    for text in ("APGR", "CPT(50%)", "always_weak", "always_strong", "oracle", "random"):
        assert text in result.stdout
    assert f"wrote {plot}" in result.stdout
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot.stat().st_size > 10_000
    report = json.loads(report_path.read_text())
    assert report["model_version"] == model.version
    assert report["thresholds"] == list(model.thresholds)
    assert report["rows"] == 300
    assert set(report["traffic"]) == {"above_cheapest", "tier_counts", "cost_saved"}
    (group,) = report["outcomes"]
    for router_name in ("model", "random", "oracle"):
        assert set(group[router_name]) == {"apgr", "cpt50", "cpt80", "cost_saved_98", "share_98"}
    assert set(group["operating_point"]) == {
        "strong_share",
        "quality",
        "quality_kept",
        "cost_saved",
    }
    assert {"always_weak", "always_strong"} <= set(group)
    assert group["random"]["apgr"] == 0.5
    assert report["levels"]["rows"] == 300
    assert len(report["levels"]["confusion"]) == 5
    assert "hard_on_cheapest" in report["levels"]


def test_eval_needs_labels(trained: Trained, tmp_path: Path) -> None:
    data = tmp_path / "q.jsonl"
    data.write_text('{"id": 1, "text": "hello"}\n', encoding="utf-8")
    result = modelrouter("eval", "--data", data, "--model", trained.path)
    assert_clean_error(result, f"{data}: no row has outcome 'scores' or a 'tier'")


# -- calibrate -------------------------------------------------------------------------------


def test_calibrate_a_strong_share(
    trained: Trained, calibrated: tuple[Path, subprocess.CompletedProcess[str]]
) -> None:
    path, result = calibrated
    before, after = load_model(trained.path), load_model(path)
    assert result.stdout.startswith("strong share 0.3 on 300 rows: strong >= ")
    assert result.stdout.rstrip().endswith(f"wrote {path} ({after.version})")
    assert after.weights.tobytes() == before.weights.tobytes()
    assert after.tier_names == before.tier_names
    assert after.thresholds != before.thresholds
    assert after.info["calibration"]["target"] == "strong share 0.3"
    assert abs(above_cheapest_share(path) - 0.3) <= 1 / 300


def test_calibrate_a_quality_with_two_tiers(trained: Trained, tmp_path: Path) -> None:
    out = tmp_path / "q.npz"
    args = ("calibrate", "--data", SAMPLE, "--model", trained.path, "--quality", "0.98")
    result = modelrouter(*args, "--tiers", "small,large", "--out", out)
    assert result.returncode == 0, result.stderr
    model = load_model(out)
    assert model.tier_names == ("small", "large")
    assert len(model.thresholds) == 1
    router = Router(model)
    rows = [r for r in read_rows(SAMPLE) if r.has_outcome]
    routed = [r.strong if router.route(r.text).tier_index else r.weak for r in rows]
    strong = [r.strong for r in rows]
    assert np.mean(routed) >= 0.98 * np.mean(strong) - 1e-12  # type: ignore[arg-type]


def test_calibrate_the_promise_with_several_bounds(trained: Trained, tmp_path: Path) -> None:
    out = tmp_path / "promise.npz"
    args = ("calibrate", "--data", SAMPLE, "--model", trained.path, "--out", out)
    result = modelrouter(*args, "--quality", "0.98", "--max-hard-on-cheapest", "0.02")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(
        "quality 0.98 of all-strong, at most 0.02 of level 3-4 queries on the cheapest tier on "
    )
    assert load_model(out).info["calibration"]["target"].startswith("quality 0.98")


def test_calibrate_a_level_bound(trained: Trained, tmp_path: Path) -> None:
    """--max-level-on-cheapest caps the first threshold at the score of that expected level with
    no outcome lift: every row scoring at least that leaves the cheapest tier (a row whose
    outcome gain is below its floor can score under it), and a level of 5 is refused."""
    out = tmp_path / "level.npz"
    args = ("calibrate", "--data", SAMPLE, "--model", trained.path, "--out", out)
    result = modelrouter(*args, "--max-level-on-cheapest", "1.5")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(
        "no query scored at level 1.5 or more on the cheapest tier on 300 rows: strong >= "
    )
    model = load_model(out)
    assert model.thresholds[0] == model.score.score_at_level(1.5)
    router = Router(model)
    edge = model.score.score_at_level(1.5)
    assert edge is not None
    decisions = [router.route(row.text) for row in read_rows(SAMPLE)]
    assert any(d.score >= edge for d in decisions) and any(d.score < edge for d in decisions)
    for decision in decisions:
        assert (decision.tier_index > 0) == (decision.score >= edge)
    result = modelrouter(*args, "--max-level-on-cheapest", "5")
    assert_clean_error(result, "the level on the cheapest tier must lie in [0, 4], got 5")


def test_calibrate_needs_a_target_and_a_share_alone(trained: Trained, tmp_path: Path) -> None:
    args = ("calibrate", "--data", SAMPLE, "--model", trained.path, "--out", tmp_path / "x.npz")
    result = modelrouter(*args)
    assert result.returncode == 2
    assert "give a target: --strong-share, or one or more of" in result.stderr
    result = modelrouter(*args, "--strong-share", "0.3", "--quality", "0.98")
    assert_clean_error(result, "give a strong share alone, or one or more of")
    assert not (tmp_path / "x.npz").exists()


def test_calibrate_into_a_config(
    trained: Trained, calibrated: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    config = tmp_path / "c.yaml"
    data: dict[str, Any] = yaml.safe_load(DEFAULT_CONFIG_YAML)
    data["model"] = str(trained.path)
    config.write_text(yaml.safe_dump(data), encoding="utf-8")
    args = ("calibrate", "--data", SAMPLE, "--model", trained.path, "--strong-share", "0.3")
    result = modelrouter(*args, "--config", config)
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip().endswith(f"wrote model and tiers[].min_score into {config}")
    loaded = load_config(config)  # still a valid configuration
    assert loaded.model == str(trained.path)  # the model the thresholds were set for
    assert loaded.tiers[0].min_score is None
    expected = load_model(calibrated[0]).thresholds  # the same target on the same rows
    assert loaded.explicit_thresholds() == tuple(round(t, 6) for t in expected)
    assert [t.name for t in loaded.tiers] == ["cheap", "strong", "expert"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]


def test_calibrate_into_a_config_uses_its_model(
    trained: Trained, calibrated: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    """Without --model the configuration's own model is scored, its path taken from the file."""
    (tmp_path / "m.npz").write_bytes(trained.path.read_bytes())
    config = tmp_path / "c.yaml"
    data: dict[str, Any] = yaml.safe_load(DEFAULT_CONFIG_YAML)
    data["model"] = "m.npz"
    config.write_text(yaml.safe_dump(data), encoding="utf-8")
    result = modelrouter(
        "calibrate", "--data", SAMPLE, "--strong-share", "0.3", "--config", config, cwd=Path("/")
    )
    assert result.returncode == 0, result.stderr
    expected = load_model(calibrated[0]).thresholds  # what --model m.npz gives
    assert load_config(config).explicit_thresholds() == tuple(round(t, 6) for t in expected)


def test_calibrate_rejects_a_bad_config(trained: Trained, tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("version: 1\ntiers: []\nbackends: {}\n", encoding="utf-8")
    args = ("calibrate", "--data", SAMPLE, "--model", trained.path, "--strong-share", "0.3")
    result = modelrouter(*args, "--config", config)
    assert_clean_error(result, "tiers: ")
    assert config.read_text(encoding="utf-8") == "version: 1\ntiers: []\nbackends: {}\n"


# -- route -----------------------------------------------------------------------------------


def check_route_line(line: str, router: Router, text: str, row_id: Any) -> None:
    decision = json.loads(line)
    assert list(decision) == ROUTE_KEYS
    assert decision["id"] == row_id
    assert decision["tier"] == router.tier_names[decision["tier_index"]]
    assert len(decision["levels"]) == 5
    assert all(isinstance(p, float) for p in decision["levels"])
    assert math.isclose(sum(decision["levels"]), 1.0, rel_tol=1e-9)
    assert decision == router.route(text).as_json(row_id)


def test_route_one_query(trained: Trained) -> None:
    query = "Review this contract clause step by step"
    result = modelrouter("route", query, "--model", trained.path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\n") == 1
    check_route_line(result.stdout, Router.load(trained.path), query, None)
    assert json.loads(result.stdout)["rules"] == ["legal", "proof"]


def test_route_one_query_with_the_shipped_model() -> None:
    """Without --model the shipped model routes (it must exist: its absence is a failure)."""
    result = modelrouter("route", "What are your business hours?")
    assert result.returncode == 0, result.stderr
    check_route_line(result.stdout, Router.default(), "What are your business hours?", None)


ODD_ROWS: list[dict[str, Any]] = [
    {"id": "a", "text": "What are your business hours?"},
    {"id": 2, "text": "", "tier": 9, "extra": {"ignored": True}},
    {"id": None, "text": "   \t  "},
    {"id": [1, "x"], "text": "Straße 🤖 漢字 テスト русский"},
    {"id": "nul", "text": "a\x00b\x00"},
    {"id": "\ud800", "text": "lone \udfff surrogate"},
    {"id": "ünï", "text": "x" * 100_000},
    {"id": 8.5, "text": "contract " * 5000},
]


def test_route_a_file(trained: Trained, tmp_path: Path) -> None:
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    rows = ODD_ROWS + [{"id": f"s{i}", "text": r.text} for i, r in enumerate(read_rows(SAMPLE))]
    lines = [json.dumps(row) for row in rows]
    lines.insert(3, "")  # a blank line is skipped
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = modelrouter("route", "--input", source, "--output", out, "--model", trained.path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == result.stderr == ""
    written = out.read_bytes().decode("utf-8").split("\n")
    assert written[-1] == ""
    assert len(written) - 1 == len(rows)
    router = Router.load(trained.path)
    for line, row in zip(written, rows, strict=False):
        check_route_line(line, router, row["text"], row["id"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.jsonl"]


def test_route_replaces_an_existing_output(trained: Trained, tmp_path: Path) -> None:
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text('{"id": 1, "text": "hi"}\n', encoding="utf-8")
    out.write_text("old\nold\nold\n", encoding="utf-8")
    result = modelrouter("route", "--input", source, "--output", out, "--model", trained.path)
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == [1]


GOOD_LINE = b'{"id": 1, "text": "fine"}'
BAD_LINES: list[tuple[str, bytes, str]] = [
    ("bad JSON", b'{"id": 3, "text": "unterminated', "(line): not valid JSON"),
    ("not an object", b'[3, "text"]', "(line): must be a JSON object"),
    ("not UTF-8", b'{"id": 3, "text": "caf\xe9"}', "(line): not valid UTF-8"),
    ("missing id", b'{"text": "no id"}', "id: missing"),
    ("missing text", b'{"id": 3}', "text: missing or not a string"),
    ("text not a string", b'{"id": 3, "text": 42}', "text: missing or not a string"),
    ("text null", b'{"id": 3, "text": null}', "text: missing or not a string"),
]


@pytest.mark.parametrize(
    ("line", "message"), [b[1:] for b in BAD_LINES], ids=[b[0] for b in BAD_LINES]
)
def test_route_stops_at_a_malformed_line(
    trained: Trained, tmp_path: Path, line: bytes, message: str
) -> None:
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_bytes(b"\n".join([GOOD_LINE, GOOD_LINE, line, GOOD_LINE]) + b"\n")
    result = modelrouter("route", "--input", source, "--output", out, "--model", trained.path)
    assert_clean_error(result, f"{source}:3: {message}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]  # no partial output


def test_route_keeps_an_existing_output_when_a_late_line_is_bad(
    trained: Trained, tmp_path: Path
) -> None:
    """A pre-existing OUT is never replaced by a partial file, even after many good lines."""
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    good = [json.dumps({"id": i, "text": f"query number {i}"}).encode() for i in range(2000)]
    source.write_bytes(b"\n".join([*good, b'{"id": "late"}']) + b"\n")
    out.write_bytes(b"the previous results\n")
    result = modelrouter("route", "--input", source, "--output", out, "--model", trained.path)
    assert_clean_error(result, f"{source}:2001: text: missing or not a string")
    assert out.read_bytes() == b"the previous results\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.jsonl"]


def test_route_input_problems(trained: Trained, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    missing = tmp_path / "absent.jsonl"
    result = modelrouter("route", "--input", missing, "--output", out, "--model", trained.path)
    assert_clean_error(result, f"{missing}: cannot read")
    assert not out.exists()


def test_route_usage(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["route"]) == 2
    assert "give either a QUERY or --input FILE" in capsys.readouterr().err
    assert main(["route", "q", "--input", str(tmp_path / "x")]) == 2
    assert "give either a QUERY or --input FILE" in capsys.readouterr().err
    assert main(["route", "--input", str(tmp_path / "x")]) == 2
    assert "--input needs --output" in capsys.readouterr().err


# -- corrupt and mismatched models -----------------------------------------------------------


def corrupt(trained: Trained, tmp_path: Path, kind: str) -> tuple[Path, str]:
    """Write a broken copy of the trained model; return it and what the error must say."""
    bad = tmp_path / "bad.npz"
    data = trained.path.read_bytes()
    if kind == "truncated":
        bad.write_bytes(data[: len(data) // 2])
        return bad, "not a readable model file"
    meta, arrays = read_raw(trained.path)
    if kind == "edited weights":
        arrays["weights"] = arrays["weights"].copy()
        arrays["weights"][5, 1] += np.float16(1.0)
        return write_raw(bad, meta, arrays, reseal=False), "checksum mismatch"
    if kind == "featurizer version":
        meta["featurizer"]["featurizer_version"] = FEATURIZER_VERSION + 1
        return write_raw(bad, meta, arrays, reseal=True), "retrain the model"
    if kind == "dense layout":
        meta["featurizer"]["dense_layout"] = "feedfacefeedface"
        return write_raw(bad, meta, arrays, reseal=True), "dense feature layout feedfacefeedface"
    assert kind == "shapes"
    arrays["weights"] = arrays["weights"][:-1]
    return write_raw(bad, meta, arrays, reseal=True), "do not fit the featurizer"


@pytest.mark.parametrize(
    "kind", ["truncated", "edited weights", "featurizer version", "dense layout", "shapes"]
)
def test_route_with_a_corrupt_model(trained: Trained, tmp_path: Path, kind: str) -> None:
    bad, message = corrupt(trained, tmp_path, kind)
    result = modelrouter("route", "hello", "--model", bad)
    assert_clean_error(result, f"{bad}: ", message)


@pytest.mark.parametrize("command", ["eval", "calibrate"])
def test_eval_and_calibrate_with_a_corrupt_model(
    trained: Trained, tmp_path: Path, command: str
) -> None:
    bad, message = corrupt(trained, tmp_path, "edited weights")
    extra = ["--strong-share", "0.3", "--out", str(tmp_path / "out.npz")]
    result = modelrouter(
        command, "--data", SAMPLE, "--model", bad, *extra[: 4 * (command != "eval")]
    )
    assert_clean_error(result, f"{bad}: ", message)
    assert not (tmp_path / "out.npz").exists()


# -- a base install: no train or plot extra --------------------------------------------------

HEAVY = ("scipy", "sklearn", "matplotlib")
# Runs the command as if the extras were not installed: importing their modules fails.
WITHOUT_EXTRAS = (
    "import sys\n"
    f"sys.modules.update(dict.fromkeys({HEAVY!r}))\n"
    "from router.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def modelrouter_without_extras(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run the command line in a subprocess where scipy, sklearn and matplotlib are missing."""
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_EXTRAS, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_the_command_line_imports_no_heavy_module() -> None:
    probe = "import sys\nfrom router.cli import build_parser\nbuild_parser()\nprint(*sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert not {m.partition(".")[0] for m in result.stdout.split()} & set(HEAVY)


@pytest.mark.parametrize(
    ("args", "extra"),
    [
        (["train", "--data", SAMPLE, "--out", "m.npz"], "train"),
        (["eval", "--data", SAMPLE, "--plot", "curve.png"], "plot"),
    ],
)
def test_a_command_without_its_extra_names_it(
    args: list[str | Path], extra: str, tmp_path: Path
) -> None:
    result = modelrouter_without_extras(
        *(tmp_path / a if a.endswith((".npz", ".png")) else a for a in map(str, args))
    )
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert result.stderr.splitlines() == [result.stderr.strip()], result.stderr  # one line
    assert f"pip install 'modelrouter[{extra}]'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.iterdir())


def test_help_lists_every_command_without_the_extras() -> None:
    result = modelrouter_without_extras("--help")
    assert result.returncode == 0, result.stderr
    for command in ("serve", "config", "route", "train", "eval", "calibrate"):
        assert command in result.stdout
    assert modelrouter_without_extras("train", "--help").returncode == 0


def test_eval_calibrate_and_route_run_without_the_extras(trained: Trained, tmp_path: Path) -> None:
    evaluated = modelrouter_without_extras("eval", "--data", SAMPLE, "--model", trained.path)
    assert evaluated.returncode == 0, evaluated.stderr
    assert "APGR" in evaluated.stdout
    out = tmp_path / "calibrated.npz"
    calibrated = modelrouter_without_extras(
        "calibrate", "--data", SAMPLE, "--model", trained.path, "--out", out,
        "--strong-share", "0.3",
    )  # fmt: skip
    assert calibrated.returncode == 0, calibrated.stderr
    assert out.exists()
    routed = modelrouter_without_extras("route", "What are your business hours?")
    assert routed.returncode == 0, routed.stderr
    assert json.loads(routed.stdout)["tier"] == "cheap"
