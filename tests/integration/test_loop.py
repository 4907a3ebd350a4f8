"""``modelrouter export`` and ``modelrouter label`` in subprocesses, on a real store.

The tiers and the judge are a fake OpenAI-compatible server (``say:PASS`` answers "PASS");
``tests/integration/test_loop_llm.py`` runs the whole loop with a real LLM.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from router.store import FeedbackRecord, RequestRecord, open_store
from router.training.data import read_rows
from tests.fakes.fake_openai import FakeOpenAIServer
from tests.integration.test_cli import modelrouter

T0 = 1_700_000_000.0


def stored(
    request_id: str,
    prompt: str | None,
    *,
    tenant: str = "acme",
    time_s: float = T0,
    answered: tuple[str, int, str] = ("cheap", 0, "m-cheap"),
    messages: tuple[tuple[str, str], ...] | None = None,
) -> RequestRecord:
    tier, index, model = answered
    return RequestRecord(
        key=f"k-{request_id}-{time_s}",
        request_id=request_id,
        time=time_s,
        method="complete",
        tenant=tenant,
        session_id="",
        tier=tier,
        tier_index=index,
        model=model,
        backend="fake",
        score=0.5,
        levels=(0.2, 0.2, 0.2, 0.2, 0.2),
        rules=(),
        reason="score",
        model_version="test",
        hints=(),
        outcome="ok",
        prompt_tokens=10,
        completion_tokens=20,
        cost_usd=0.001,
        strongest_cost_usd=0.01,
        answered_tier=tier,
        answered_tier_index=index,
        answered_model=model,
        prompt=prompt,
        messages=messages,
    )


@pytest.fixture
def store_path(tmp_path: Path) -> Iterator[Path]:
    """A SQLite store holding eight prompts (two tenants), one without text, two ratings."""
    path = tmp_path / "store.db"
    store = open_store(path)
    records: list[Any] = [
        stored(f"r{i}", f"Question number {i}: what is {i} + {i}?", time_s=T0 + i) for i in range(6)
    ]
    records.append(stored("g1", "Globex asks: why is the sky blue?", tenant="globex", time_s=T0))
    records.append(
        stored(
            "chat1",
            "And in French?",
            time_s=T0 + 10,
            answered=("expert", 2, "m-expert"),
            messages=(("user", "Say hello"), ("assistant", "Hello"), ("user", "And in French?")),
        )
    )
    records.append(stored("notext", None, time_s=T0 + 11))
    records.append(FeedbackRecord("r1", T0 + 100, "acme", 0.9, "good", ""))
    records.append(FeedbackRecord("chat1", T0 + 100, "acme", 0.2, "wrong", "bad"))
    store.write(records)
    store.close()
    yield path


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAIServer]:
    server = FakeOpenAIServer(tokens_per_second=10_000)
    await server.start()
    yield server
    await server.stop()


def loop_config(path: Path, fake: FakeOpenAIServer, judge_says: str = "PASS") -> Path:
    """Write a configuration whose tiers and judge are the fake server's models."""
    price = {"input_per_mtok": 1.0, "output_per_mtok": 2.0}
    data = {
        "version": 1,
        "tiers": [
            {"name": "cheap", "model": "m-cheap", "backend": "fake", "price": price},
            {"name": "judge", "model": f"say:{judge_says}", "backend": "fake", "price": price},
            {"name": "expert", "model": "m-expert", "backend": "fake", "price": price},
        ],
        "backends": {"fake": {"kind": "openai", "base_url": fake.base_url}},
    }
    path.write_text(yaml.safe_dump(data))
    return path


def label(store: Path, config: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return modelrouter(
        "label",
        "--store",
        store,
        "--config",
        config,
        "--judge",
        "judge",
        "--out",
        out,
        *extra,
    )


async def test_label_grades_both_answers_and_writes_outcome_rows(
    store_path: Path, fake: FakeOpenAIServer, tmp_path: Path
) -> None:
    config = loop_config(tmp_path / "router.yaml", fake)
    out = tmp_path / "labels.jsonl"
    result = await _in_thread(label, store_path, config, out, "--sample", "4")
    assert result.returncode == 0, result.stderr
    assert "labelling 4 prompts: m-cheap and m-expert, judged by say:PASS" in result.stderr
    assert "[4/4]" in result.stderr and "cheap PASS, strong PASS" in result.stderr
    assert "wrote 4 rows" in result.stdout and "16 calls paid" in result.stdout
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 4 and len({r["id"] for r in rows}) == 4
    for row in rows:
        assert row["scores"] == {"m-cheap": 1.0, "m-expert": 1.0}
        assert (row["weak_model"], row["strong_model"]) == ("m-cheap", "m-expert")
        assert row["source"] == "label" and row["judge"] == "say:PASS"
    assert all(r.has_outcome for r in read_rows(out))  # the format train reads
    # Two answers and two grades per prompt, the judge shown each answer.
    chats = [r for r in fake.requests if r.path.endswith("/chat/completions")]
    assert sorted(r.model for r in chats).count("say:PASS") == 8
    judged = [r.body["messages"][0]["content"] for r in chats if r.model == "say:PASS"]
    assert all("Reply with exactly one word: PASS if it is, FAIL" in j for j in judged)
    assert all(r.body["temperature"] == 0.0 for r in chats)


async def test_a_reply_that_is_not_a_grade_leaves_no_outcome(
    store_path: Path, fake: FakeOpenAIServer, tmp_path: Path
) -> None:
    config = loop_config(tmp_path / "router.yaml", fake, judge_says="Probably_PASS")
    out = tmp_path / "labels.jsonl"
    result = await _in_thread(label, store_path, config, out, "--sample", "2")
    assert result.returncode == 0, result.stderr
    assert "4 answers the judge did not grade" in result.stdout
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(row["scores"] is None for row in rows)


async def test_resume_after_an_interruption_pays_for_no_step_twice(
    store_path: Path, fake: FakeOpenAIServer, tmp_path: Path
) -> None:
    config = loop_config(tmp_path / "router.yaml", fake)
    out = tmp_path / "labels.jsonl"
    fake.first_token_ms = 300  # slow enough to interrupt mid-run
    # Started with SIGINT ignored, as a background job of a script inherits it: the run
    # must still stop on SIGINT, whether or not this suite itself runs in the background.
    with _sigint_ignored():
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "router.cli",
                "label",
                "--store",
                str(store_path),
                "--config",
                str(config),
                "--judge",
                "judge",
                "--out",
                str(out),
                "--sample",
                "6",
            ],
            stderr=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
    try:
        deadline = time.monotonic() + 60
        while len([r for r in fake.requests if r.finished_at]) < 5:
            assert time.monotonic() < deadline and process.poll() is None
            await asyncio.sleep(0.05)
        # This loop (and the fake) stalls meanwhile: the run stops without the upstream.
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 130, stderr
    assert "interrupted; what was done is saved: run again with --resume" in stderr
    assert not out.exists()
    paid_before = len([r for r in fake.requests if r.finished_at])
    fake.first_token_ms = 0
    refused = await _in_thread(label, store_path, config, out, "--sample", "6")
    assert refused.returncode == 0  # out does not exist yet: a new run with the same sample
    assert "reused" in refused.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 6
    # 6 prompts x 4 calls, each paid once over both runs (the interrupted call at most twice).
    total = len([r for r in fake.requests if r.path.endswith("/chat/completions")])
    assert 24 <= total <= 25, (paid_before, total)
    again = await _in_thread(label, store_path, config, out, "--sample", "6")
    assert again.returncode == 1 and "exists: --resume continues its run" in again.stderr
    resumed = await _in_thread(label, store_path, config, out, "--sample", "6", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "0 calls paid" in resumed.stdout and "24 steps reused" in resumed.stdout
    assert [json.loads(line) for line in out.read_text().splitlines()] == rows


@contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Ignore SIGINT here meanwhile, so that a process started now inherits it ignored."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


async def test_label_errors_are_one_line(
    store_path: Path, fake: FakeOpenAIServer, tmp_path: Path
) -> None:
    config = loop_config(tmp_path / "router.yaml", fake)
    out = tmp_path / "labels.jsonl"
    bad_judge = await _in_thread(
        modelrouter,
        "label",
        "--store",
        store_path,
        "--config",
        config,
        "--judge",
        "boss",
        "--out",
        out,
        "--sample",
        "2",
    )
    assert bad_judge.returncode == 1
    assert "--judge: unknown tier 'boss' (configured: cheap, judge, expert)" in bad_judge.stderr
    no_run = await _in_thread(label, store_path, config, out, "--sample", "2", "--resume")
    assert no_run.returncode == 1 and "no labelling run writes" in no_run.stderr
    missing = await _in_thread(label, tmp_path / "none.db", config, out, "--sample", "2")
    assert missing.returncode == 1 and "Traceback" not in missing.stderr


async def test_export_writes_text_ratings_and_labels(
    store_path: Path, fake: FakeOpenAIServer, tmp_path: Path
) -> None:
    config = loop_config(tmp_path / "router.yaml", fake)
    labels = tmp_path / "labels.jsonl"
    assert (await _in_thread(label, store_path, config, labels, "--sample", "8")).returncode == 0
    out = tmp_path / "rows.jsonl"
    result = modelrouter("export", "--store", store_path, "--out", out, "--config", config)
    assert result.returncode == 0, result.stderr
    assert "wrote 8 rows" in result.stdout and "1 requests kept no text" in result.stdout
    rows = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert set(rows) == {"r0", "r1", "r2", "r3", "r4", "r5", "g1", "chat1"}
    assert rows["chat1"]["text"] == "And in French?"
    # A caller's rating replaces the judge's grade of the model it rated.
    assert rows["r1"]["scores"] == {"m-cheap": 0.9, "m-expert": 1.0}
    assert rows["chat1"]["scores"] == {"m-cheap": 1.0, "m-expert": 0.2}
    assert rows["r2"]["scores"] == {"m-cheap": 1.0, "m-expert": 1.0}
    trained = read_rows(out)
    assert all(r.has_outcome for r in trained)


async def test_export_filters_and_keeps_one_sided_ratings(
    store_path: Path, tmp_path: Path, fake: FakeOpenAIServer
) -> None:
    out = tmp_path / "rows.jsonl"
    result = modelrouter(
        "export", "--store", store_path, "--out", out, "--tenant", "acme", "--since", str(T0 + 1)
    )
    assert result.returncode == 0, result.stderr
    rows = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert set(rows) == {"r1", "r2", "r3", "r4", "r5", "chat1"}
    # No --config and no label: the rating is kept, but it is no outcome of a known pair.
    assert rows["r1"]["rating"] == 0.9 and "scores" not in rows["r1"]
    config = loop_config(tmp_path / "router.yaml", fake)
    modelrouter("export", "--store", store_path, "--out", out, "--config", config)
    rows = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert rows["r1"]["scores"] == {"m-cheap": 0.9}  # one side only: no outcome to train on
    assert not next(r for r in read_rows(out) if r.id == "r1").has_outcome
    assert "scores" not in rows["r2"]  # no rating, no label


async def _in_thread(fn: Any, *args: Any) -> Any:
    """Run a blocking call (a subprocess) while the fake server keeps serving."""
    return await asyncio.to_thread(fn, *args)
