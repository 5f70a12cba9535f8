"""deploy/docker-compose.hosts.yml (several hosts on one machine) and deploy/docker-compose.gpu.yml (a
GPU training worker), read as YAML over deploy/docker-compose.yml the way ``docker compose -f ... -f ...``
merges them: maps merged key by key, volumes by their target."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
ISNET_COMMANDS = ("backend", "backend-2", "worker", "gpu-worker")


def _merge(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        return {k: _merge(base[k], v) if k in base else v for k, v in {**base, **over}.items()}
    if isinstance(base, list) and isinstance(over, list) and all(isinstance(v, str) and ":" in v for v in base + over):
        targets = {v.split(":")[1]: v for v in base}
        targets.update({v.split(":")[1]: v for v in over})
        return list(targets.values())
    return over


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for name in ("docker-compose.yml", "docker-compose.hosts.yml", "docker-compose.gpu.yml"):
        merged = _merge(merged, yaml.safe_load((DEPLOY / name).read_text()))
    return merged["services"]


def test_every_isnet_host_has_a_model_dir_of_its_own_and_one_shared_store(services):
    caches = [services[s]["volumes"] for s in ISNET_COMMANDS]
    assert all(len(v) == 1 and v[0].endswith(":/data/models") for v in caches)
    assert len({v[0].split(":")[0] for v in caches}) == len(ISNET_COMMANDS)
    for key in ("ISNET_MODEL_STORE", "REDIS_URL", "AWS_ENDPOINT_URL", "ISNET_RETRAIN_QUEUE"):
        assert len({services[s]["environment"][key] for s in ISNET_COMMANDS}) == 1, key


def test_the_gpu_worker_takes_only_retraining_and_the_cpu_worker_only_pre_annotation(services):
    retrain = services["gpu-worker"]["environment"]["ISNET_RETRAIN_QUEUE"]
    assert services["gpu-worker"]["command"][-2:] == ["--queue", retrain]
    assert retrain not in services["worker"]["command"]
    assert services["gpu-worker"]["build"]["args"]["ONNXRUNTIME"] == "onnxruntime-gpu"
    assert "cu" in services["gpu-worker"]["build"]["args"]["TORCH_INDEX_URL"]


def test_the_load_balancer_spreads_over_both_replicas(services):
    config = " ".join(services["lb"]["command"])
    assert "server backend:9090" in config and "server backend-2:9090" in config
    assert services["backend"]["depends_on"]["minio-bucket"] == {"condition": "service_completed_successfully"}
