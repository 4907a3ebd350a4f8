"""The relabel-retrain loop end to end with a real LLM: Gemma 3 270M as every tier and judge.

serve (store with keep_text) -> traffic and ratings -> label (interrupted, then --resume)
-> export -> train on merged data -> calibrate into the configuration -> SIGHUP -> the
service routes with the new model. Gemma 3 270M is far too small to judge (it tends to
echo the prompt, which is no grade): this checks that the plumbing is real and
deterministic, not the judge's quality.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from router._proto.modelrouter.v1 import router_pb2 as pb
from router.config import load_config
from router.domain import ChatMessage
from router.loop.label import TierRunner
from router.model import load_model
from router.store import open_store
from tests.integration.llm_server import REQUIRE_ENV, llama_server, skip_module_without_llm
from tests.integration.server.support import ServeProcess, router_stub
from tests.integration.test_cli import modelrouter
from tests.unit.training.support import SAMPLE

pytestmark = [pytest.mark.llm, pytest.mark.slow]

_missing = skip_module_without_llm()

PROMPTS = [
    "What is the capital of France?",
    "Name a primary colour.",
    "How many legs does a spider have?",
    "Translate 'thank you' into Spanish.",
    "What is 12 times 12?",
    "Which planet is closest to the sun?",
]
LABEL_SAMPLE = 4
TIMEOUTS = {"connect_s": 5, "first_token_s": 300, "idle_s": 300, "total_s": 600}


@pytest.fixture(scope="module")
def gemma_url() -> Iterator[str]:
    assert not _missing, f"{REQUIRE_ENV} is set but these are missing: {_missing}"
    with llama_server() as url:
        yield url


def write_config(path: Path, url: str, store: Path) -> Path:
    """Three tiers (and the judge) on Gemma, each under its own model name."""
    tiers = []
    for i, name in enumerate(("cheap", "strong", "expert")):
        tiers.append(
            {
                "name": name,
                "model": f"gemma-{name}",
                "backend": "gemma",
                "price": {"input_per_mtok": 0.1 * 10**i, "output_per_mtok": 0.2 * 10**i},
                "max_tokens": 8,
                "timeouts": TIMEOUTS,
            }
        )
    data = {
        "version": 1,
        "model": "builtin",
        "server": {"workers": 1, "grace_period_s": 30},
        "store": {"path": str(store), "keep_text": True, "flush_interval_s": 0.1},
        "tiers": tiers,
        "backends": {"gemma": {"kind": "openai", "base_url": url}},
    }
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def send_traffic(port: int) -> list[str]:
    """Complete every prompt at temperature 0; rate two answers; return the request ids."""
    ids = []
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = router_stub(channel)
        for i, prompt in enumerate(PROMPTS):
            request = pb.CompleteRequest(
                route=pb.RouteRequest(prompt=prompt, request_id=f"loop-{i}", tenant="acme"),
                generation=pb.GenerationOptions(max_tokens=8, temperature=0.0),
            )
            events = list(stub.Complete(request, timeout=600))
            assert events[-1].HasField("summary")
            ids.append(f"loop-{i}")
        stub.Feedback(pb.FeedbackRequest(request_id="loop-0", rating=1.0, tenant="acme"))
        stub.Feedback(pb.FeedbackRequest(request_id="loop-1", rating=0.0, tenant="acme"))
    return ids


def wait_stored(store: Path, count: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        db = open_store(store, migrate=False)
        try:
            rows = [r for r in db.requests() if r.prompt is not None]
        finally:
            db.close()
        if len(rows) >= count:
            return
        assert time.monotonic() < deadline, f"{len(rows)} of {count} requests stored"
        time.sleep(0.2)


def label_command(store: Path, config: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "router.cli", "label", "--store", str(store), "--config",
        str(config), "--sample", str(LABEL_SAMPLE), "--judge", "expert", "--out", str(out),
        "--max-tokens", "8", *extra,
    ]  # fmt: skip


def label_states(store: Path) -> dict[int, Any]:
    """Return label's persisted state of each prompt (None until started), by prompt index."""
    db = open_store(store, migrate=False)
    try:
        return {i: db.state(f"label:loop-{i}") for i in range(len(PROMPTS))}
    finally:
        db.close()


def rerun_cheap(config: Path, prompt: str) -> str:
    """Return the cheap tier's answer to a prompt, run as label runs it."""
    runner = TierRunner(load_config(config), max_tokens=8)

    async def run() -> str:
        try:
            return (await runner.answer(0, (ChatMessage("user", prompt),))).text
        finally:
            await runner.aclose()

    return asyncio.run(run())


def test_the_loop_end_to_end(gemma_url: str, tmp_path: Path) -> None:
    store = tmp_path / "store.db"
    config = write_config(tmp_path / "router.yaml", gemma_url, store)
    server = ServeProcess("--config", str(config), "--port", "0")
    try:
        port = server.port
        send_traffic(port)
        wait_stored(store, len(PROMPTS))

        # label, interrupted once its first prompt is done, then resumed.
        out = tmp_path / "labels.jsonl"
        process = subprocess.Popen(
            label_command(store, config, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        deadline = time.monotonic() + 900
        while not any(
            isinstance(s, dict) and "judge_strong" in s for s in label_states(store).values()
        ):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "label did not finish a prompt in 15 minutes"
            time.sleep(0.5)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 130, stderr
        assert "run again with --resume" in stderr and not out.exists()
        done = {i: s for i, s in label_states(store).items() if s}
        resumed = subprocess.run(
            label_command(store, config, out, "--resume"), capture_output=True, text=True,
            timeout=1800, check=False,
        )  # fmt: skip
        assert resumed.returncode == 0, resumed.stderr
        assert f"[{LABEL_SAMPLE}/{LABEL_SAMPLE}]" in resumed.stderr
        paid = int(resumed.stdout.split(" calls paid")[0].rsplit(" ", 1)[1])
        reused = int(resumed.stdout.split(" steps reused")[0].rsplit(" ", 1)[1])
        assert paid + reused == 4 * LABEL_SAMPLE and reused >= 4  # nothing paid twice
        states = label_states(store)
        for i, before in done.items():  # what was done before the interruption stands
            for side in ("cheap", "strong", "judge_cheap", "judge_strong"):
                if side in before:
                    assert states[i][side] == before[side]
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert len(rows) == LABEL_SAMPLE
        assert {(r["weak_model"], r["strong_model"], r["judge"]) for r in rows} == {
            ("gemma-cheap", "gemma-expert", "gemma-expert")
        }
        # Deterministic: at temperature 0 the cheap tier gives a labelled prompt's answer
        # again, word for word.
        labelled = next(i for i, s in states.items() if s and "cheap" in s)
        assert rerun_cheap(config, PROMPTS[labelled]) == states[labelled]["cheap"]["answer"]

        # export, merge-train, calibrate into the configuration, reload.
        exported = tmp_path / "rows.jsonl"
        result = modelrouter(
            "export", "--store", store, "--config", config, "--out", exported, "--tenant", "acme"
        )
        assert result.returncode == 0, result.stderr
        assert f"wrote {len(PROMPTS)} rows" in result.stdout
        model = tmp_path / "retrained.npz"
        result = modelrouter(
            "train", "--data", SAMPLE, "--data", f"{exported}:3", "--out", model,
            "--name", "loop", "--cv-folds", "0", "--buckets-log2", "10",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        trained = load_model(model)
        assert trained.info["trained_rows"] == 300 + len(PROMPTS)
        assert trained.info["data_weights"][1] == ["rows.jsonl", 3.0]
        result = modelrouter(
            "calibrate", "--data", SAMPLE, "--model", model, "--config", config,
            "--strong-share", "0.4",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        server.signal(signal.SIGHUP)
        server.wait_for("reloaded", where=lambda line: line.get("model_version") == trained.version)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = router_stub(channel)
            info = stub.GetConfig(pb.GetConfigRequest())
            assert info.model_version == trained.version
            decision = stub.Route(pb.RouteRequest(prompt=PROMPTS[0])).decision
            assert decision.model_version == trained.version
    finally:
        server.close()
