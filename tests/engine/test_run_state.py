"""engine/checkpoint/run_state.py: state.json as one versioned record, checked when read."""
import json
from types import SimpleNamespace

import pytest

from engine.checkpoint import STATE_FILE, RunState
from engine.network_spec import NetworkSpec
from utility.errors import UserError

NETWORK = {"model": "ResNet18", "embedding_size": 16, "image_shape": (3, 32, 32), "neck": "bnneck",
           "neck_feat": "after", "last_stride": 1, "stem": "small", "eval_resize": "full", "ink_crop": True}


class _Config(SimpleNamespace):
    def as_dict(self):
        return dict(vars(self))


def _written(folder, record):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / STATE_FILE).write_text(json.dumps(record))
    return str(folder)


def _old_layout():
    """state.json as train.py wrote it before RunState: no version, no network, the settings among the args."""
    return {"position": {"iteration": 4, "pass_id": 1, "batch": 0}, "scheduler": {"last_epoch": 4, "last_lr": 0.01},
            "classes": [3, 5, 9], "args": {"model": "ResNet34", "image_shape": [3, 48, 48], "lr": 0.01},
            "xbm": {"size": 2, "write": 1}}


def test_a_state_round_trips_through_state_json(tmp_path):
    config = _Config(**NETWORK, lr=0.1, train_list="t.txt")
    state = RunState.of_run({"iteration": 7, "pass_id": 2, "batch": 1}, {"last_epoch": 7, "last_lr": 0.1},
                            [4, 8], config, {"dac": {"pass": 1, "assignment": [0, 1]}, "xbm": None})
    record = json.loads(json.dumps(state.to_dict()))
    assert record["version"] == 2 and record["network"]["image_shape"] == [3, 32, 32]
    assert "xbm" not in record and record["dac"] == {"pass": 1, "assignment": [0, 1]}  # extensions at the top
    read = RunState.read(_written(tmp_path, record))
    assert json.loads(json.dumps(read.to_dict())) == record
    assert (read.position, read.classes, read.extensions, read.network) == \
        (state.position, state.classes, state.extensions, state.network)
    assert NetworkSpec(**read.network) == NetworkSpec.from_config(config)


def test_a_checkpoint_written_before_the_version_still_reads(tmp_path):
    state = RunState.read(_written(tmp_path, _old_layout()))
    assert state.version == 1 and state.position == {"iteration": 4, "pass_id": 1, "batch": 0}
    assert state.network == {"model": "ResNet34", "image_shape": (3, 48, 48)}  # what its args held
    assert state.extensions == {"xbm": {"size": 2, "write": 1}}  # opaque: the extension checks it


def test_a_folder_without_state_json_has_no_run_state(tmp_path):
    assert RunState.read(str(tmp_path)) is None


def _damage(record, path, value):
    *parents, last = path
    for key in parents:
        record = record[key]
    if value is KeyError:
        del record[last]
    else:
        record[last] = value


@pytest.mark.parametrize("path, value, field", [
    (("position", "iteration"), "2", "position.iteration '2'"),
    (("position", "iteration"), -5, "position.iteration -5"),
    (("position", "batch"), 1.5, "position.batch 1.5"),
    (("position", "epoch"), 3, "position has an unknown entry 'epoch'"),
    (("position", "iteration"), KeyError, "position.iteration is missing"),
    (("position",), [4, 1, 0], "position [4, 1, 0]"),
    (("classes",), KeyError, "classes is missing"),
    (("classes",), ["a", "b"], "classes ['a', 'b']"),
    (("scheduler",), "x", "scheduler 'x'"),
    (("scheduler",), {"last_epoch": "4"}, "scheduler {'last_epoch': '4'}"),
    (("args",), ["--lr", "0.1"], "args ['--lr', '0.1']"),
    (("args", "image_shape"), [3, -5, 32], "args.image_shape [3, -5, 32]"),
    (("args", "image_shape"), [4, 32, 32], "args.image_shape [4, 32, 32]"),
    (("args", "image_shape"), "abc", "args.image_shape 'abc'"),
    (("args", "embedding_size"), True, "args.embedding_size True"),
    (("version",), 99, "version 99"),
    (("version",), "2", "version '2'"),
])
def test_each_wrong_field_is_one_user_error_naming_the_file_and_the_field(tmp_path, path, value, field):
    record = _old_layout()
    _damage(record, path, value)
    folder = _written(tmp_path, record)
    with pytest.raises(UserError) as info:
        RunState.read(folder)
    message = str(info.value)
    assert message.startswith(f"{tmp_path / STATE_FILE}: {field}") and "\n" not in message


def test_a_wrong_network_record_names_its_field(tmp_path):
    record = {**_old_layout(), "version": 2, "network": {**NETWORK, "image_shape": [3, 0, 32]}}
    with pytest.raises(UserError, match=r"state\.json: network\.image_shape \[3, 0, 32\] is not 3,H,W"):
        RunState.read(_written(tmp_path, record))
    del record["network"]["stem"]
    with pytest.raises(UserError, match=r"state\.json: network\.stem is missing"):
        RunState.read(_written(tmp_path, record))
