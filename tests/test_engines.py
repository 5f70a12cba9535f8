"""ONNX Runtime engines: built from the real weights, they agree with torch fp32, and only
verified files are ever served.

The engines are built once for the module (in a temporary MODEL_DIR, with the cached
pretrained weights) at 320, the vendor's input size: fp32 and fp16 through serving's own
path, int8 through ``isnet engine build`` on 8 DUTS-TR calibration images (at 320, its default).
"""

import json
import shutil

import numpy as np
import onnx
import pytest

from backend.cli import main
from backend.images import load_image
from backend.isnet.engines import EngineError, create_engine
from backend.isnet.engines.store import EngineStore, sidecar_of
from backend.isnet.segmenter import Segmenter
from backend.learning.registry import ModelRegistry, ModelVersion
from backend.settings import load
from tests.paths import DIS_DEMO_IMAGES, DUTS_TR, REPO

SIZE = 320
AGREEMENT = {"onnx-fp32": 0.003, "onnx-fp16": 0.01, "onnx-int8": 0.01}
"""Largest mean absolute difference (0-1 scale) from torch fp32's masks on the DIS demo images."""


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Settings with an empty MODEL_DIR (engines built here) and the cached pretrained weights."""
    patch = pytest.MonkeyPatch()
    patch.setenv("MODEL_DIR", str(tmp_path_factory.mktemp("models")))
    patch.setenv("ISNET_ENGINE", "auto")
    patch.delenv("ISNET_CALIB_DIR", raising=False)
    patch.chdir(REPO)  # relative dataset paths in build files are relative to the working directory
    yield load()
    patch.undo()


@pytest.fixture(scope="module")
def version(env):
    return ModelRegistry(env).current()


@pytest.fixture(scope="module")
def engines(env, version):
    """Every engine at SIZE; int8 built by the CLI exactly as a user would."""
    status = main(["engine", "build", "deploy/engines/isnet_int8.yaml", "--calib", str(DUTS_TR / "images"),
                   "--num", "8"])
    assert status == 0
    return {name: create_engine(name, version, env, SIZE) for name in ("torch", *AGREEMENT)}


@pytest.fixture(scope="module")
def demo_images(env):
    return [load_image(p, env.max_pixels) for p in sorted(DIS_DEMO_IMAGES.iterdir())]


@pytest.fixture(scope="module")
def torch_masks(engines, demo_images):
    return Segmenter(engines["torch"], SIZE).predict(demo_images)


@pytest.mark.parametrize("name", list(AGREEMENT))
def test_engine_masks_agree_with_torch_fp32_on_the_dis_demo_images(name, engines, demo_images, torch_masks):
    masks = Segmenter(engines[name], SIZE).predict(demo_images)
    for mask, reference in zip(masks, torch_masks, strict=True):
        assert mask.shape == reference.shape
        mae = np.abs(mask.astype(np.float64) - reference).mean() / 255
        assert mae <= AGREEMENT[name], f"{name}: MAE {mae:.4f} against torch fp32"


def test_engines_describe_their_precision_and_providers(engines):
    described = {name: engine.describe() for name, engine in engines.items()}
    assert [described[n]["precision"] for n in AGREEMENT] == ["fp32", "fp16", "int8"]
    assert all("CPUExecutionProvider" in described[n]["providers"] for n in AGREEMENT)


@pytest.mark.parametrize("name", ["onnx-fp32", "onnx-int8"])
def test_one_file_serves_every_input_size(name, env, version, engines, demo_images):
    before = sorted(EngineStore(version, env).dir.iterdir())
    engine = create_engine(name, version, env, 256)
    mask = Segmenter(engine, 256).predict_one(demo_images[1])
    reference = Segmenter(engines["torch"], 256).predict_one(demo_images[1])
    assert np.abs(mask.astype(np.float64) - reference).mean() / 255 <= AGREEMENT[name]
    assert sorted(EngineStore(version, env).dir.iterdir()) == before


def test_engines_take_a_batch(engines, demo_images):
    batch = np.zeros((3, 3, SIZE, SIZE), np.float32)
    for name in AGREEMENT:
        assert engines[name].predict(batch).shape == (3, 1, SIZE, SIZE)


def test_exported_graph_is_opset_17_with_one_dynamic_output(env, version, engines):
    model = onnx.load(str(EngineStore(version, env).engine_file("fp32")), load_external_data=False)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == 17
    assert [o.name for o in model.graph.output] == ["prob"]
    dims = [d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "", "height", "width"]


def test_fp16_engine_keeps_float32_inputs_and_outputs(env, version, engines):
    model = onnx.load(str(EngineStore(version, env).engine_file("fp16")))
    float32 = onnx.TensorProto.FLOAT
    assert model.graph.input[0].type.tensor_type.elem_type == float32
    assert model.graph.output[0].type.tensor_type.elem_type == float32
    assert {i.data_type for i in model.graph.initializer if i.dims} == {onnx.TensorProto.FLOAT16}


def test_int8_engine_is_static_per_channel_qdq(env, version, engines):
    model = onnx.load(str(EngineStore(version, env).engine_file("int8")))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    inits = {i.name: i for i in model.graph.initializer}
    conv_weights = [n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear" and
                    n.input[0] in inits and inits[n.input[0]].data_type == onnx.TensorProto.INT8]
    assert conv_weights, "weights are stored as int8"
    per_channel = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and len(inits[n.input[1]].dims) == 1
                   if n.input[1] in inits]
    assert per_channel, "weight scales are per output channel"


def test_int8_keeps_activations_uint8_between_convolutions(env, version, engines):
    """ReLUs fold into their convolutions' ranges; adds and pools run between a DQ and a Q, so
    onnxruntime fuses them into uint8 kernels instead of going through float."""
    graph = onnx.load(str(EngineStore(version, env).engine_file("int8"))).graph
    producer = {out: n.op_type for n in graph.node for out in n.output}
    consumers: dict[str, list[str]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node.op_type)
    assert not [n for n in graph.node if n.op_type == "Relu"]
    for node in (n for n in graph.node if n.op_type in ("Add", "MaxPool")):
        assert {producer[i] for i in node.input} == {"DequantizeLinear"}, node.name
        assert set(consumers[node.output[0]]) == {"QuantizeLinear"}, node.name


def test_int8_keeps_the_image_and_logit_convolutions_in_float(env, version, engines):
    model = onnx.load(str(EngineStore(version, env).engine_file("int8")))
    inits = {i.name for i in model.graph.initializer}
    float_weights = {n.name: n.input[1] in inits for n in model.graph.node if n.op_type == "Conv"}
    assert float_weights["/conv_in/Conv"] and float_weights["/side1/Conv"]
    assert sum(float_weights.values()) == 2, "every other convolution reads int8 weights through a DequantizeLinear"


def test_building_again_finds_the_cached_file(env, version, engines):
    store = EngineStore(version, env)
    path = store.engine_file("fp16")
    mtime = path.stat().st_mtime_ns
    assert main(["engine", "build", "deploy/engines/isnet_fp16.yaml"]) == 0
    assert path.stat().st_mtime_ns == mtime


def test_the_sidecar_records_checksum_version_and_calibration(env, version, engines):
    path = EngineStore(version, env).engine_file("int8")
    record = json.loads(sidecar_of(path).read_text())
    assert record["model_version"] == version.name
    assert record["config"]["calibrate_mode"] == "kl_divergence"
    assert len(record["calibration"]["images"]) == 8
    assert record["sha256"] and record["bytes"] == path.stat().st_size


# -- broken files are detected and rebuilt, never served ------------------------------------


@pytest.fixture
def copied_store(env, version, engines, tmp_path):
    """A copy of the built engines in a fresh MODEL_DIR, so breaking them spares the others' tests."""
    settings = env.replace(model_dir_env=str(tmp_path / "models"))
    copy = ModelVersion(version.name, version.checkpoint, tmp_path / "models" / "versions" / version.name)
    shutil.copytree(EngineStore(version, env).dir, copy.directory / "engines")
    return EngineStore(copy, settings)


def test_corrupt_engine_file_is_rebuilt_not_served(copied_store, demo_images, torch_masks):
    path = copied_store.engine_file("fp16")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte deep inside the weights
    path.write_bytes(bytes(data))
    assert "sha256" in copied_store.problem(path)
    engine = create_engine("onnx-fp16", copied_store.version, copied_store.settings, SIZE)
    assert copied_store.problem(engine.path) is None
    mask = Segmenter(engine, SIZE).predict_one(demo_images[1])
    assert np.abs(mask.astype(np.float64) - torch_masks[1]).mean() / 255 <= AGREEMENT["onnx-fp16"]


def test_truncated_engine_file_is_detected(copied_store):
    path = copied_store.engine_file("int8")
    path.write_bytes(path.read_bytes()[:1000])
    assert "sha256" in copied_store.problem(path)


def test_engine_file_without_its_sidecar_is_not_trusted(copied_store):
    path = copied_store.engine_file("fp32")
    sidecar_of(path).unlink()
    assert "no sidecar" in copied_store.problem(path)


def test_engine_file_of_another_model_version_is_not_served(env, version, engines, tmp_path):
    other = ModelVersion("isnet-ft-other", version.checkpoint, tmp_path / "other")
    shutil.copytree(EngineStore(version, env).dir, other.directory / "engines")
    store = EngineStore(other, env)
    good, bad = store.scan()
    assert not good
    assert all("built for model version" in reason for reason in bad.values())


def test_sidecar_edited_to_another_config_is_detected(copied_store):
    path = copied_store.engine_file("int8")
    record = json.loads(sidecar_of(path).read_text())
    record["config"]["per_channel"] = False
    sidecar_of(path).write_text(json.dumps(record))
    assert "hash" in copied_store.problem(path)


def test_unknown_engine_name_is_a_clear_error(env, version):
    with pytest.raises(EngineError, match="valid engines: torch, onnx-fp32, onnx-fp16, onnx-int8"):
        create_engine("tensorrt", version, env, SIZE)


def test_auto_serves_onnx_fp32_until_engines_are_measured(env, version, engines):
    assert create_engine("auto", version, env, SIZE).name == "onnx-fp32"
