"""Check a rendered Helm chart: `modelrouter config check` accepts it, and its pod fits it.

Reads the manifests `helm template` printed (a file), writes the ConfigMap's
config.yaml and the TLS Secret's files into a temporary directory (the configuration's
/etc/modelrouter/tls/ paths pointed there), sets the env Secret's variables, and runs
`modelrouter config check` (with $MODELROUTER_REPLICA_ID set to a pod's name, as the
pod's downward API sets it). Then checks what the issue asks of the pod: native gRPC probes
of the health service, a preStop, and terminationGracePeriodSeconds that covers the preStop,
server.drain_delay_s and server.grace_period_s; and that each pod's replica id is its name.

Usage: python scripts/helm_check.py RENDERED.yaml
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

TLS_DIR = "/etc/modelrouter/tls/"
CONFIG_PATH = "/etc/modelrouter/config/config.yaml"
# The supervisor's margin after the grace period, and the chart's (router/server/supervisor.py).
KILL_MARGIN_S = 5
# A Deployment's pod name, as the downward API gives it to MODELROUTER_REPLICA_ID.
POD_NAME = "modelrouter-7d9f8c6b5-x2x9q"


def _one(docs: list[dict[str, Any]], kind: str, suffix: str = "") -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(suffix)]
    assert len(found) == 1, f"{len(found)} {kind} named *{suffix}"
    return found[0]


def check(docs: list[dict[str, Any]]) -> str:
    """Check the manifests; return `modelrouter config check`'s output."""
    config_text = _one(docs, "ConfigMap")["data"]["config.yaml"]
    outcome = _config_check(docs, config_text)
    _check_pod(docs, yaml.safe_load(config_text)["server"])
    return outcome


def _config_check(docs: list[dict[str, Any]], config_text: str) -> str:
    """Run `modelrouter config check` on the rendered configuration; return its output."""
    env = dict(os.environ) | {"MODELROUTER_REPLICA_ID": POD_NAME}
    secrets = [d for d in docs if d["kind"] == "Secret"]
    with tempfile.TemporaryDirectory() as tmp:
        for secret in secrets:
            data = secret.get("stringData", {})
            if secret["type"] == "kubernetes.io/tls":
                for name, text in data.items():
                    (Path(tmp) / name).write_text(text, encoding="utf-8")
            else:
                env.update(data)
        path = Path(tmp) / "config.yaml"
        path.write_text(config_text.replace(TLS_DIR, f"{tmp}/"), encoding="utf-8")
        checked = subprocess.run(
            [sys.executable, "-m", "router.cli", "config", "check", str(path)],
            env=env,
            capture_output=True,
            text=True,
        )
        assert checked.returncode == 0, f"config check failed:\n{checked.stderr}"
    return checked.stdout.strip()


def _check_pod(docs: list[dict[str, Any]], server: dict[str, Any]) -> None:
    """Check the pod's probes, preStop and termination grace against the configuration."""
    pod = _one(docs, "Deployment")["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["command"][-1] == CONFIG_PATH
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["grpc"] == server["port"] and ports["health"] == server["health_port"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == server["health_port"], probe
    assert container["readinessProbe"]["grpc"]["service"] == "modelrouter.v1.ModelRouter"
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    needed = pre_stop + math.ceil(server["drain_delay_s"]) + math.ceil(server["grace_period_s"])
    assert pod["terminationGracePeriodSeconds"] == needed + KILL_MARGIN_S, (
        pod["terminationGracePeriodSeconds"],
        needed,
    )
    liveness = container["livenessProbe"]
    # Health is NOT_SERVING through the drain and grace: the liveness probe must outlast it.
    assert liveness["periodSeconds"] * liveness["failureThreshold"] > needed
    if "tls" in server:
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert TLS_DIR.rstrip("/") in mounts
    # The replica id (server.replica_id) is each pod's own name, never one in the
    # configuration every pod shares.
    env = {e["name"]: e for e in container["env"]}
    assert env["MODELROUTER_REPLICA_ID"].get("valueFrom") == {
        "fieldRef": {"fieldPath": "metadata.name"}
    }, env.get("MODELROUTER_REPLICA_ID")
    assert "replica_id" not in server
    kinds = {d["kind"] for d in docs}
    assert {"Service", "PodDisruptionBudget"} <= kinds
    assert any(d["kind"] == "Service" and d["spec"].get("clusterIP") == "None" for d in docs)


def main() -> int:
    """Check the rendered manifests named on the command line."""
    text = Path(sys.argv[1]).read_text(encoding="utf-8")
    docs = [d for d in yaml.safe_load_all(text) if d]
    print(f"helm_check: {check(docs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
