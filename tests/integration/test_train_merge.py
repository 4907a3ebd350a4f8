"""``modelrouter train --data FILE[:WEIGHT] ...``: sources merged with per-source weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from router.model import load_model
from router.routing import Router
from router.training.data import DataError, read_rows
from tests.integration.test_cli import assert_clean_error, modelrouter
from tests.unit.training.support import SAMPLE

SMALL = ("--cv-folds", "0", "--buckets-log2", "10")


def own_traffic(path: Path, n: int = 40) -> Path:
    """Write rows as ``modelrouter export`` does: the pair of models named on each row."""
    rows = []
    for i in range(n):
        hard = i % 2 == 0
        rows.append(
            {
                "id": f"traffic-{i}",
                "text": f"{'Prove that the series converges' if hard else 'Hello there'} #{i}",
                "scores": {"llama-8b": 0.0 if hard else 1.0, "opus": 1.0},
                "weak_model": "llama-8b",
                "strong_model": "opus",
                "source": "traffic",
            }
        )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_row_may_name_its_own_pair_of_models(tmp_path: Path) -> None:
    rows = read_rows(own_traffic(tmp_path / "t.jsonl"))
    assert all(r.has_outcome for r in rows)
    assert (rows[0].weak, rows[0].strong) == (0.0, 1.0)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "x", "scores": {"a": 1}, "weak_model": "b"}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl:1: scores\['b'\]: missing"):
        read_rows(bad)
    bad.write_text(json.dumps({"text": "x", "scores": {"a": 1}, "weak_model": 3}) + "\n")
    with pytest.raises(DataError, match=r"bad\.jsonl:1: weak_model: must be a model name"):
        read_rows(bad)


def test_files_merge_as_their_concatenation(tmp_path: Path) -> None:
    """Two files, weight 1: the model of their concatenation, byte for byte."""
    traffic = own_traffic(tmp_path / "traffic.jsonl")
    joined = tmp_path / "joined.jsonl"
    joined.write_bytes(SAMPLE.read_bytes() + traffic.read_bytes())
    two, one = tmp_path / "two.npz", tmp_path / "one.npz"
    result = modelrouter("train", "--data", SAMPLE, "--data", traffic, "--out", two, *SMALL)
    assert result.returncode == 0, result.stderr
    assert modelrouter("train", "--data", joined, "--out", one, *SMALL).returncode == 0
    merged = load_model(two)
    assert merged.checksum == load_model(one).checksum
    assert merged.info["trained_rows"] == 340
    assert "data_weights" not in merged.info


def test_a_weighted_source_counts_more(tmp_path: Path) -> None:
    traffic = own_traffic(tmp_path / "traffic.jsonl")
    plain, heavy = tmp_path / "plain.npz", tmp_path / "heavy.npz"
    for out, spec in ((plain, f"{traffic}"), (heavy, f"{traffic}:5")):
        result = modelrouter("train", "--data", SAMPLE, "--data", spec, "--out", out, *SMALL)
        assert result.returncode == 0, result.stderr
    weighted = load_model(heavy)
    assert weighted.info["data_weights"] == [["routing_sample.jsonl", 1.0], ["traffic.jsonl", 5.0]]
    assert weighted.checksum != load_model(plain).checksum
    # The own-traffic rows teach that "Prove ..." needs the strong model: weighted five
    # times, they pull its score further up.
    query = "Prove that the series converges #99"
    assert Router.load(heavy).route(query).score > Router.load(plain).route(query).score


def test_a_row_without_a_source_takes_its_file_name(tmp_path: Path) -> None:
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps({"text": "hello", "tier": 0}) + "\n")
    assert read_rows(path, default_source="mine")[0].source == "mine"
    assert read_rows(path)[0].source == ""


@pytest.mark.parametrize("weight", ["0", "-1", "inf", "nan"])
def test_a_weight_must_be_a_positive_number(tmp_path: Path, weight: str) -> None:
    result = modelrouter("train", "--data", f"{SAMPLE}:{weight}", "--out", tmp_path / "m.npz")
    assert result.returncode == 2
    assert "the weight must be a positive number" in result.stderr
    assert not (tmp_path / "m.npz").exists()


def test_a_colon_that_is_not_a_weight_belongs_to_the_file_name(tmp_path: Path) -> None:
    result = modelrouter("train", "--data", f"{tmp_path}/a:b.jsonl", "--out", tmp_path / "m.npz")
    assert_clean_error(result, f"{tmp_path}/a:b.jsonl: cannot read")


def test_calibrate_into_a_config_makes_it_serve_the_model(tmp_path: Path) -> None:
    """The thresholds fit the model they were set for: --model goes into the file too."""
    model = tmp_path / "models" / "mine.npz"
    model.parent.mkdir()
    assert modelrouter("train", "--data", SAMPLE, "--out", model, *SMALL).returncode == 0
    config = tmp_path / "router.yaml"
    assert modelrouter("config", "default").returncode == 0
    config.write_text(modelrouter("config", "default").stdout)
    args = ("calibrate", "--data", SAMPLE, "--model", model, "--strong-share", "0.3")
    result = modelrouter(*args, "--config", config)
    assert result.returncode == 0, result.stderr
    from router.config import load_config

    loaded = load_config(config)
    assert loaded.model == "models/mine.npz"  # relative to the configuration's directory
    assert loaded.explicit_thresholds() is not None
