"""engine/network_spec.py: the network's settings, built from the configuration, checked when read from files."""
import pytest

from cli.args import defaults
from engine.network_spec import CHOICES, NetworkSpec
from utility.errors import UserError


def test_the_spec_holds_the_configurations_network_settings():
    config = defaults("eval", model="ResNet18", embedding_size=16, image_shape=(3, 32, 32), neck="bnneck",
                      stem="small", ink_crop=True)
    spec = NetworkSpec.from_config(config)
    assert spec == NetworkSpec(model="ResNet18", embedding_size=16, image_shape=(3, 32, 32), neck="bnneck",
                               neck_feat="after", last_stride=2, stem="small", eval_resize="crop", ink_crop=True)
    assert NetworkSpec.from_config(spec) == spec
    record = spec.to_record()
    assert record["image_shape"] == [3, 32, 32]
    assert NetworkSpec.from_record(record, "x: ") == spec
    with pytest.raises(AttributeError):
        spec.model = "ResNet50"  # frozen


def test_every_flag_default_is_a_value_the_spec_accepts():
    spec = NetworkSpec.from_config(defaults("infer"))
    assert NetworkSpec.from_record(spec.to_record(), "defaults: ") == spec


def test_a_file_older_than_a_setting_gives_only_the_settings_it_has():
    assert NetworkSpec.fields_of({"model": "ResNet34", "image_shape": [3, 48, 48], "input": "RGB"}, "x: ") == \
        {"model": "ResNet34", "image_shape": (3, 48, 48)}


@pytest.mark.parametrize("name, value", [("image_shape", [3, -5, 32]), ("image_shape", [4, 32, 32]),
                                         ("image_shape", "abc"), ("image_shape", [3, 32]), ("embedding_size", -1),
                                         ("embedding_size", "16"), ("neck", "wide"), ("last_stride", 3),
                                         ("last_stride", True), ("ink_crop", "yes"), ("uncertainty", 1),
                                         ("pooling", "max"),
                                         ("model", 5)])
def test_a_wrong_setting_is_one_user_error_naming_where_and_which(name, value):
    with pytest.raises(UserError, match=rf"^in/preprocess\.json: {name} .* is not "):
        NetworkSpec.fields_of({name: value}, "in/preprocess.json: ")


def test_a_record_older_than_the_uncertainty_head_or_the_pooling_choice_reads_as_without_them():
    record = NetworkSpec.from_config(defaults("infer", uncertainty=True, pooling="gem")).to_record()
    assert record["uncertainty"] is True and NetworkSpec.from_record(record, "f: ").uncertainty
    assert NetworkSpec.from_record(record, "f: ").pooling == "gem"
    del record["uncertainty"], record["pooling"]
    assert NetworkSpec.from_record(record, "f: ").uncertainty is False
    assert NetworkSpec.from_record(record, "f: ").pooling == "avg"


def test_a_record_missing_a_setting_is_refused():
    record = NetworkSpec.from_config(defaults("infer")).to_record()
    del record["neck"]
    with pytest.raises(UserError, match="^f: network.neck is missing$"):
        NetworkSpec.from_record(record, "f: network.")


def test_the_allowed_values_are_those_the_model_builders_accept():
    import models
    from models.head import NECK_FEATS, NECKS
    from models.layers import POOLINGS, STEMS

    assert NetworkSpec.names() == ("model", "embedding_size", "image_shape", "neck", "neck_feat", "last_stride",
                                   "stem", "eval_resize", "ink_crop", "uncertainty", "pooling")
    assert (CHOICES["neck"], CHOICES["neck_feat"], CHOICES["last_stride"], CHOICES["stem"], CHOICES["pooling"]) == \
        (NECKS, NECK_FEATS, models.LAST_STRIDES, tuple(STEMS), tuple(POOLINGS))
