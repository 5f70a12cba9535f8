"""Engine build files: the vendor's recipe, read strictly, with command-line overrides."""

from pathlib import Path

import pytest
import yaml

from backend.isnet.engines.config import ConfigError, EngineConfig, default_config, load_config, parse_config
from tests.paths import DUTS_TR, REPO

DEPLOY = REPO / "deploy" / "engines"


def _vendor_file(**changes) -> dict:
    data = yaml.safe_load((DEPLOY / "isnet_int8.yaml").read_text())
    for dotted, value in changes.items():
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node[key]
        node[leaf] = value
    return data


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "int8"])
def test_deploy_files_describe_what_serving_builds_by_default(dtype):
    config = load_config(DEPLOY / f"isnet_{dtype}.yaml")
    assert config.digest() == default_config(dtype).digest()
    assert (config.dtype, config.size, config.batch, config.calib_num) == (dtype, 320, 1, 50)


def test_int8_file_is_the_vendors_recipe():
    config = load_config(DEPLOY / "isnet_int8.yaml")
    assert (config.calibrate_mode, config.per_channel, config.calib_num) == ("kl_divergence", True, 50)


@pytest.mark.parametrize("path", sorted(DEPLOY.glob("*.yaml")), ids=lambda p: p.name)
def test_deploy_files_name_no_data_so_int8_calibrates_on_the_default_images(path):
    config = load_config(path)
    assert (config.calib_dir, config.calib_suffix) == (None, None)


def test_an_empty_dataset_path_means_the_default():
    assert parse_config(_vendor_file(**{"dataset.path": ""})).calib_dir is None
    assert parse_config(_vendor_file(**{"dataset.path": "imgs"})).calib_dir == Path("imgs")


def test_command_line_values_override_the_file():
    config = load_config(DEPLOY / "isnet_int8.yaml").override(size=1024, calib_dir=DUTS_TR / "images", num=8)
    assert (config.size, config.calib_dir, config.calib_num) == (1024, DUTS_TR / "images", 8)


def test_vendor_spelling_of_per_channel_is_accepted():
    data = _vendor_file(**{"backend.quantize": {"calibrate_mode": "minmax", "quantize_per_channel": False}})
    assert parse_config(data).per_channel is False


def test_hardware_only_sections_are_ignored():
    data = _vendor_file(workspace={"path": "./deploy_weights/"}, **{"backend.compile": {"data_transport_mode": 1}})
    assert parse_config(data).digest() == load_config(DEPLOY / "isnet_int8.yaml").digest()


def test_unknown_calibration_mode_is_refused_with_the_valid_ones():
    with pytest.raises(ConfigError, match="kl_divergence, minmax, percentile"):
        parse_config(_vendor_file(**{"backend.quantize.calibrate_mode": "mse"}))


def test_preprocessing_other_than_the_served_one_is_refused():
    ops = _vendor_file()["dataset"]["process_ops"]
    ops[2]["mean"] = [0.485, 0.456, 0.406]
    with pytest.raises(ConfigError, match="Normalize"):
        parse_config(_vendor_file(**{"dataset.process_ops": ops}))


def test_resize_that_differs_from_the_input_shape_is_refused():
    ops = _vendor_file()["dataset"]["process_ops"]
    ops[1]["size"] = [512, 512]
    with pytest.raises(ConfigError, match="Resize"):
        parse_config(_vendor_file(**{"dataset.process_ops": ops}))


def test_misspelt_key_is_refused_rather_than_ignored():
    data = _vendor_file()
    data["backend"]["quantize"]["calibrate_mod"] = "minmax"
    with pytest.raises(ConfigError, match="calibrate_mod"):
        parse_config(data)


def test_non_square_shape_is_refused():
    with pytest.raises(ConfigError, match="square"):
        parse_config(_vendor_file(**{"frontend.shape.input": [1, 3, 320, 640]}))


def test_fp32_and_fp16_files_serve_every_size_so_their_hash_ignores_it():
    assert EngineConfig("a", "fp32", size=320).digest() == EngineConfig("b", "fp32", size=1024).digest()
    assert default_config("fp16").digest() != default_config("fp32").digest()


def test_int8_hash_covers_calibration_size_mode_and_images():
    base = default_config("int8")
    assert base.digest("images-a") != base.override(size=1024).digest("images-a")
    assert base.digest("images-a") != EngineConfig("x", "int8", calibrate_mode="minmax").digest("images-a")
    assert base.digest("images-a") != base.digest("images-b")


def test_int8_is_calibrated_at_320_by_default_whatever_size_it_serves():
    assert default_config("int8").size == 320


def test_int8_keeps_the_image_and_logit_convolutions_in_float_by_default():
    assert load_config(DEPLOY / "isnet_int8.yaml").skip_conv_layers == ("conv_in", "side1")


def test_vendor_skip_conv_layers_choose_the_float_convolutions_and_change_the_engine():
    config = parse_config(_vendor_file(**{"backend.quantize.skip_conv_layers": []}))
    assert config.skip_conv_layers == ()
    assert config.digest("images") != load_config(DEPLOY / "isnet_int8.yaml").digest("images")
