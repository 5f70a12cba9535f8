"""ISNetDIS and ISNetGTEncoder are the official architectures, key for key."""

import json

import pytest
import torch

from backend.isnet.network import ISNetDIS, ISNetGTEncoder
from backend.isnet.weights import WeightsError, extract_state_dict, load_state_dict_strict
from tests.paths import MANIFEST

OFFICIAL = json.loads(MANIFEST.read_text())


def _shapes(model: torch.nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def _official_state(cls: type) -> dict[str, torch.Tensor]:
    return {k: torch.randn(shape) if shape else torch.tensor(0) for k, shape in OFFICIAL[cls.__name__].items()}


@pytest.mark.parametrize("cls", [ISNetDIS, ISNetGTEncoder])
def test_state_dict_keys_and_shapes_equal_the_official_manifest(cls):
    assert _shapes(cls()) == OFFICIAL[cls.__name__]


@pytest.mark.parametrize(("cls", "params"), [(ISNetDIS, 44_046_790), (ISNetGTEncoder, 6_877_734)])
def test_parameter_count_equals_the_official_one(cls, params):
    assert sum(p.numel() for p in cls().parameters()) == params


@pytest.mark.parametrize("cls", [ISNetDIS, ISNetGTEncoder])
def test_official_format_checkpoint_loads_strictly(cls):
    load_state_dict_strict(cls(), _official_state(cls))


def test_missing_key_is_named_in_the_error():
    state = _official_state(ISNetDIS)
    del state["stage3.rebnconv2.conv_s1.weight"]
    with pytest.raises(WeightsError, match=r"missing keys \(1\): stage3\.rebnconv2\.conv_s1\.weight"):
        load_state_dict_strict(ISNetDIS(), state)


def test_extra_key_is_named_in_the_error():
    state = _official_state(ISNetDIS)
    state["outconv.weight"] = torch.zeros(1, 6, 1, 1)
    with pytest.raises(WeightsError, match=r"unexpected keys \(1\): outconv\.weight"):
        load_state_dict_strict(ISNetDIS(), state)


def test_mis_shaped_key_is_named_in_the_error():
    state = _official_state(ISNetDIS)
    state["side1.weight"] = torch.zeros(1, 32, 3, 3)
    with pytest.raises(WeightsError, match=r"side1\.weight: checkpoint \(1, 32, 3, 3\)"):
        load_state_dict_strict(ISNetDIS(), state)


def test_data_parallel_prefix_and_training_checkpoint_wrappers_are_accepted():
    state = _official_state(ISNetDIS)
    wrapped = {"model": {f"module.{k}": v for k, v in state.items()}, "step": 7}
    assert extract_state_dict(wrapped).keys() == state.keys()


@torch.no_grad()
def test_segmenter_returns_six_side_outputs_at_input_size_and_six_decoder_features():
    sides, features = ISNetDIS().eval()(torch.rand(1, 3, 96, 64))
    assert len(sides) == 6 and all(s.shape == (1, 1, 96, 64) for s in sides)
    assert all(s.min() >= 0 and s.max() <= 1 for s in sides)
    assert [f.shape[1] for f in features] == [64, 64, 128, 256, 512, 512]


@torch.no_grad()
def test_gt_encoder_features_match_the_segmenter_decoder_features_for_intermediate_supervision():
    _, dis_features = ISNetDIS().eval()(torch.rand(2, 3, 128, 128))
    _, gt_features = ISNetGTEncoder().eval()(torch.rand(2, 1, 128, 128))
    assert [f.shape for f in dis_features] == [f.shape for f in gt_features]


@torch.no_grad()
def test_predict_is_the_first_side_output():
    model = ISNetDIS().eval()
    x = torch.rand(1, 3, 64, 64)
    torch.testing.assert_close(model.predict(x), model(x)[0][0])
