"""A selection larger than the budget (Label Studio sends every selected task in one ``/predict``):
what fits is predicted, the rest is answered without a ``result`` (Label Studio then stores nothing
for it) and handed to background pre-annotation under the same model version."""

from __future__ import annotations

import io
import time

import pytest
import requests
from PIL import Image

CONFIG = (
    '<View><Image name="image" value="$image"/>'
    '<BrushLabels name="tag" toName="image"><Label value="Foreground"/></BrushLabels></View>'
)
BUDGET_S = 3
TASKS = 40
FAILING = {1}
"""Tasks whose image is missing: answered at once with an empty ``result`` (position 1 is in the first chunk)."""


@pytest.fixture(scope="module")
def backend(serve_backend, random_checkpoint, image_host, tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    return serve_backend({
        "ISNET_WEIGHTS": str(random_checkpoint), "ISNET_ENGINE": "torch", "ISNET_INPUT_SIZE": "320",
        "ISNET_HOME": str(home), "MODEL_DIR": str(home / "models"), "LABEL_STUDIO_URL": image_host.url,
        "LABEL_STUDIO_API_KEY": "", "ISNET_PREDICT_BUDGET": str(BUDGET_S),
    })


def size_of(i: int) -> tuple[int, int]:
    """Task ``i``'s image size: every task's differs, so an answer's region names the task it belongs to."""
    return 600 - 3 * i, 400 + 2 * i


@pytest.fixture(scope="module")
def answered(backend, image_host):
    base = Image.open(image_host.root / "0003.jpeg").convert("RGB")
    tasks = []
    for i in range(TASKS):
        buf = io.BytesIO()
        base.rotate(i * 5 + 3).resize(size_of(i)).save(buf, "JPEG", quality=90)
        path = f"/missing-{i}.jpeg" if i in FAILING else image_host.add(f"big-{i}.jpeg", buf.getvalue())
        tasks.append({"id": 1000 + i, "project": 9, "data": {"image": path}})
    start = time.monotonic()
    response = requests.post(backend.url + "/predict", timeout=100,
                             json={"tasks": tasks, "project": "9.1795550339", "label_config": CONFIG})
    seconds = time.monotonic() - start
    metrics = requests.get(backend.url + "/metrics.json", timeout=5).json()
    return response.json()["results"], seconds, metrics


def test_every_task_gets_exactly_one_entry_in_order(answered):
    results, _, _ = answered
    assert len(results) == TASKS
    assert all(r["model_version"] for r in results)
    answered_ones = [i for i, r in enumerate(results) if "result" in r]
    assert set(answered_ones) >= FAILING, "the failed task is in the first chunk, which is always answered"
    assert set(answered_ones) - FAILING, "at least one task predicted within the budget"
    for i in answered_ones:  # the i-th entry belongs to the i-th task: failed ones empty, the others their size
        if i in FAILING:
            assert results[i]["result"] == [] and results[i]["score"] == 0.0, i
            continue
        assert results[i]["result"], f"task {i}: a min-max normalised map always has a region"
        (region,) = results[i]["result"]
        assert (region["original_width"], region["original_height"]) == size_of(i), i


def test_the_answer_comes_within_the_budget_plus_one_batch(answered):
    _, seconds, metrics = answered
    assert seconds < BUDGET_S + 4 * metrics["inference"]["seconds_per_image"] + 5


def test_predicted_tasks_come_first_and_the_rest_have_no_result(answered):
    results, _, _ = answered
    has_result = ["result" in r for r in results]
    done = has_result.index(False)
    assert 0 < done < TASKS
    assert not any(has_result[done:])


def test_the_rest_is_handed_to_background_preannotation_under_the_same_version(answered):
    results, _, metrics = answered
    handed = metrics["handed_over"]["last_preannotation"]
    deferred = [1000 + i for i, r in enumerate(results) if "result" not in r]
    assert list(handed["task_ids"]) == deferred
    assert handed["model_version"] == results[0]["model_version"] == metrics["model_version"]
    assert handed["project"] == "9.1795550339"
