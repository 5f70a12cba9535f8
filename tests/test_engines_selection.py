"""``ISNET_ENGINE=auto``: the fastest engine measured within its accuracy budget, else onnx-fp32."""

import pytest

from backend.isnet.engines import EngineError, check_engine_name
from backend.isnet.engines.selection import FALLBACK, Measurements
from backend.learning.registry import ModelVersion

FP32 = {"mae": 0.0400, "avgfmeasure": 0.8500, "sm": 0.8800}


@pytest.fixture
def measurements(tmp_path):
    return Measurements(ModelVersion("v1", tmp_path / "checkpoint.pth", tmp_path))


def record(m, engine, seconds, precision=None, dataset="duts-te-500", size=320, **deltas):
    metrics = {k: FP32[k] + deltas.get(k, 0.0) for k in FP32}
    precision = precision or {"torch": "fp32", "onnx-fp32": "fp32"}.get(engine, engine.removeprefix("onnx-"))
    m.record(engine, size, precision, metrics, seconds, dataset, 500)


def test_without_measurements_onnx_fp32_is_served(measurements):
    assert measurements.choose(320)[0] == FALLBACK == "onnx-fp32"


def test_fastest_engine_within_budget_is_served(measurements):
    record(measurements, "torch", 2.0)
    record(measurements, "onnx-fp32", 1.7)
    record(measurements, "onnx-fp16", 2.1, mae=0.0005)
    record(measurements, "onnx-int8", 0.5, mae=0.0015, avgfmeasure=-0.004, sm=-0.002)
    assert measurements.choose(320)[0] == "onnx-int8"


def test_engine_over_its_budget_is_not_served_however_fast(measurements):
    record(measurements, "onnx-fp32", 1.7)
    record(measurements, "onnx-int8", 0.5, sm=-0.004)  # int8 may lose 0.003 S-measure
    assert measurements.choose(320)[0] == "onnx-fp32"


def test_fp16_gets_the_tighter_budget(measurements):
    record(measurements, "onnx-fp32", 1.7)
    record(measurements, "onnx-fp16", 0.9, mae=0.0015)  # fine for int8, too much for fp16
    assert measurements.choose(320)[0] == "onnx-fp32"


def test_measurements_at_another_size_do_not_count(measurements):
    record(measurements, "onnx-fp32", 1.7, size=1024)
    record(measurements, "onnx-int8", 0.5, size=1024)
    assert measurements.choose(320)[0] == "onnx-fp32"
    assert measurements.choose(1024)[0] == "onnx-int8"


def test_measurements_on_other_data_are_not_compared(measurements):
    record(measurements, "onnx-fp32", 1.7)
    record(measurements, "onnx-int8", 0.5, dataset="ecssd")
    assert measurements.choose(320)[0] == "onnx-fp32"


def test_a_new_measurement_replaces_the_old_one(measurements):
    record(measurements, "onnx-fp32", 1.7)
    record(measurements, "onnx-int8", 0.5, mae=0.01)
    record(measurements, "onnx-int8", 0.5)
    assert measurements.choose(320)[0] == "onnx-int8"


def test_unknown_engine_name_is_an_error_listing_the_valid_ones():
    with pytest.raises(EngineError) as err:
        check_engine_name("onnx-int4")
    for name in ("torch", "onnx-fp32", "onnx-fp16", "onnx-int8", "auto"):
        assert name in str(err.value)


def test_the_choice_says_which_engines_were_passed_over_and_why(measurements):
    record(measurements, "onnx-fp32", 1.7)
    record(measurements, "onnx-fp16", 1.9)
    record(measurements, "onnx-int8", 0.5, avgfmeasure=-0.009)
    chosen, why = measurements.choose(320)
    assert chosen == "onnx-fp32"
    assert "onnx-int8 out of budget (MAE +0.0000, avg F -0.0090, S +0.0000)" in why
    assert "onnx-fp16 within budget but slower (1.900 s/image)" in why
