"""The labeling config names the BrushLabels -> Image pair to predict for, or says what is missing."""

import pytest

from backend.labelstudio.config import BrushTarget, LabelConfigError, parse_label_config

# The config a real Label Studio 1.23 sent in /setup and /predict.
REAL = (
    '<View><Image name="image" value="$image"/><BrushLabels name="tag" toName="image">'
    '<Label value="Foreground"/></BrushLabels></View>'
)

TWO_PAIRS = """
<View>
  <Image name="photo" value="$photo"/>
  <Image name="xray" value="$scan"/>
  <BrushLabels name="objects" toName="photo">
    <Label value="Car" background="red"/><Label value="Person"/>
  </BrushLabels>
  <BrushLabels name="bones" toName="xray"><Label value="Bone"/></BrushLabels>
</View>
"""

IMAGE = '<Image name="i" value="$img"/>'
BRUSH = '<BrushLabels name="b" toName="i"><Label value="A"/></BrushLabels>'


def view(*tags: str) -> str:
    return "<View>" + "".join(tags) + "</View>"


def test_the_config_label_studio_sends_gives_tag_image_and_first_label():
    assert parse_label_config(REAL) == BrushTarget("tag", "image", "image", "Foreground", ("Foreground",))


def test_without_from_name_the_first_brush_labels_is_used():
    target = parse_label_config(TWO_PAIRS)
    assert (target.from_name, target.to_name, target.value_key, target.label) == ("objects", "photo", "photo", "Car")
    assert target.labels == ("Car", "Person")


def test_from_name_picks_another_brush_labels_and_its_image():
    target = parse_label_config(TWO_PAIRS, from_name="bones")
    assert (target.from_name, target.to_name, target.value_key, target.label) == ("bones", "xray", "scan", "Bone")


def test_unknown_from_name_lists_the_available_ones():
    with pytest.raises(LabelConfigError, match=r"ISNET_FROM_NAME='nope'.*'objects', 'bones'"):
        parse_label_config(TWO_PAIRS, from_name="nope")


def test_label_setting_picks_one_of_the_tags_labels():
    assert parse_label_config(TWO_PAIRS, label="Person").label == "Person"


def test_label_setting_that_is_not_a_label_of_the_tag_lists_the_labels():
    with pytest.raises(LabelConfigError, match=r"ISNET_LABEL='Dog'.*'Car', 'Person'"):
        parse_label_config(TWO_PAIRS, label="Dog")


def test_label_setting_is_used_when_the_tag_has_no_labels():
    config = view(IMAGE, '<BrushLabels name="b" toName="i"/>')
    assert parse_label_config(config, label="Object").label == "Object"


def test_a_label_alias_is_what_results_carry():
    config = view(IMAGE, '<BrushLabels name="b" toName="i"><Label value="Car" alias="C"/></BrushLabels>')
    assert parse_label_config(config).label == "C"
    assert parse_label_config(config, label="Car").label == "C"


def test_config_without_brush_labels_names_what_is_missing_and_what_it_has():
    config = view(IMAGE, '<RectangleLabels name="r" toName="i"><Label value="A"/></RectangleLabels>')
    with pytest.raises(LabelConfigError, match=r"no <BrushLabels> tag \(it has <RectangleLabels>\)"):
        parse_label_config(config)


def test_brush_labels_pointing_to_something_other_than_an_image_is_refused():
    config = view('<Text name="t" value="$text"/>', BRUSH.replace('toName="i"', 'toName="t"'))
    with pytest.raises(LabelConfigError, match=r"does not point to an <Image>.*'t' is a <Text>"):
        parse_label_config(config)


def test_brush_labels_pointing_to_a_missing_tag_is_refused():
    config = view(IMAGE, BRUSH.replace('toName="i"', 'toName="img"'))
    with pytest.raises(LabelConfigError, match="'img' does not exist"):
        parse_label_config(config)


def test_first_brush_labels_that_points_to_an_image_is_used():
    config = """<View><Text name="t" value="$text"/><Image name="i" value="$img"/>
        <BrushLabels name="bad" toName="t"><Label value="A"/></BrushLabels>
        <BrushLabels name="good" toName="i"><Label value="B"/></BrushLabels></View>"""
    assert parse_label_config(config).from_name == "good"


def test_to_name_listing_several_tags_uses_the_image_among_them():
    config = view('<Text name="t" value="$x"/>', IMAGE, BRUSH.replace('toName="i"', 'toName="t,i"'))
    assert parse_label_config(config).to_name == "i"


def test_no_label_and_no_label_setting_is_refused():
    config = view(IMAGE, '<BrushLabels name="b" toName="i"></BrushLabels>')
    with pytest.raises(LabelConfigError, match=r"no <Label.*ISNET_LABEL is not set"):
        parse_label_config(config)


def test_tag_names_are_case_insensitive_like_in_the_label_studio_editor():
    config = view(IMAGE, BRUSH).lower().replace("toname", "toName")
    assert parse_label_config(config) == BrushTarget("b", "i", "img", "a", ("a",))


def test_image_value_must_be_a_task_data_reference():
    config = view('<Image name="i" value="http://x/a.png"/>', BRUSH)
    with pytest.raises(LabelConfigError, match=r'use value="\$<field>"'):
        parse_label_config(config)


def test_multi_image_value_list_is_refused_clearly():
    config = view('<Image name="i" valueList="$imgs"/>', BRUSH)
    with pytest.raises(LabelConfigError, match="valueList"):
        parse_label_config(config)


@pytest.mark.parametrize("xml", ["", "   ", "<View><Image", "not xml at all"])
def test_empty_or_broken_xml_is_a_label_config_error(xml):
    with pytest.raises(LabelConfigError):
        parse_label_config(xml)


def test_xml_entities_are_refused_not_expanded():
    bomb = '<?xml version="1.0"?><!DOCTYPE v [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]><View>&b;</View>'
    with pytest.raises(LabelConfigError, match="not valid XML"):
        parse_label_config(bomb)


def test_label_config_error_is_a_value_error_so_servers_can_answer_400():
    assert issubclass(LabelConfigError, ValueError)
