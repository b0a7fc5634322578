"""RunState: the record a checkpoint keeps in state.json, versioned and checked when read (no Paddle here).

  version     2 (checkpoints written before the version existed read as 1)
  position    {"iteration", "pass_id", "batch"}: where training stands, whole numbers >= 0
  scheduler   the LR scheduler's state_dict ({"last_epoch", "last_lr"})
  classes     the training list's class ids, in label order (a resume must train the same classes)
  args        the resolved configuration of the run, flag name -> value
  network     the NetworkSpec's fields (version 1: those its args held)
  <name>      one record per training extension that saves state (e.g. "dac", "xbm"), kept as it is:
              each extension checks its own record when it restores it

Any damage found on reading is one UserError naming the file and the field.
"""
import os
from dataclasses import asdict, dataclass, field

from engine.checkpoint.storage import STATE_FILE, read_state
from engine.network_spec import NetworkSpec
from utility.errors import UserError

VERSION = 2
POSITION_KEYS = ("iteration", "pass_id", "batch")
_FIELDS = ("version", "position", "scheduler", "classes", "args", "network")


@dataclass(frozen=True)
class RunState:
    position: dict
    scheduler: dict
    classes: list
    args: dict
    network: dict               # NetworkSpec fields as a configuration holds them (a version-1 checkpoint:
                                # those its args held)
    extensions: dict = field(default_factory=dict)
    version: int = VERSION

    @classmethod
    def of_run(cls, position, scheduler, classes, config, extensions=None):
        """The state of a run now: `position` a dict of POSITION_KEYS, `config` the resolved configuration."""
        return cls(position=dict(position), scheduler=dict(scheduler), classes=[int(c) for c in classes],
                   args=config.as_dict(), network=asdict(NetworkSpec.from_config(config)),
                   extensions={name: record for name, record in (extensions or {}).items() if record is not None})

    def to_dict(self):
        """The JSON-able dict written as state.json."""
        return {**self.extensions, "version": self.version, "position": self.position, "scheduler": self.scheduler,
                "classes": self.classes, "args": self.args, "network": self.network}

    @classmethod
    def read(cls, directory):
        """The checked RunState of checkpoint `directory`, or None when it has no state.json (plain parameters)."""
        record = read_state(directory)
        if record is None:
            return None
        return cls.from_dict(record, os.path.join(directory, STATE_FILE))

    @classmethod
    def from_dict(cls, record, source):
        """A RunState from state.json's dict; UserError naming `source` and the field for anything wrong."""
        def wrong(name, value, expected):
            return UserError(f"{source}: {name} {_short(value)} is not {expected}")

        version = record.get("version", 1)
        if not _is_int(version) or not 1 <= version <= VERSION:
            raise wrong("version", version, f"1 to {VERSION} (a checkpoint of a newer toolkit?)")
        for name in ("position", "scheduler", "classes", "args"):
            if name not in record:
                raise UserError(f"{source}: {name} is missing")
        position, scheduler, classes, args = (record[name] for name in ("position", "scheduler", "classes", "args"))
        if not isinstance(position, dict):
            raise wrong("position", position, f"a record of {', '.join(POSITION_KEYS)}")
        for key, value in position.items():
            if key not in POSITION_KEYS:
                raise UserError(f"{source}: position has an unknown entry {_short(key)} "
                                f"(known: {', '.join(POSITION_KEYS)})")
            if not _is_int(value) or value < 0:
                raise wrong(f"position.{key}", value, "a whole number >= 0")
        if "iteration" not in position:
            raise UserError(f"{source}: position.iteration is missing")
        if not isinstance(scheduler, dict) or not _is_int(scheduler.get("last_epoch")) \
                or not isinstance(scheduler.get("last_lr"), (int, float)) or isinstance(scheduler["last_lr"], bool):
            raise wrong("scheduler", scheduler, "an LR scheduler state (last_epoch, last_lr)")
        if not isinstance(classes, list) or not all(map(_is_int, classes)):
            raise wrong("classes", classes, "a list of class ids")
        if not isinstance(args, dict):
            raise wrong("args", args, "a record of the run's settings")
        if "network" in record:
            network = asdict(NetworkSpec.from_record(record["network"], f"{source}: network."))
        else:  # version 1: the network's settings were among the arguments
            network = NetworkSpec.fields_of(args, f"{source}: args.")
        extensions = {name: value for name, value in record.items() if name not in _FIELDS}
        return cls(position=position, scheduler=scheduler, classes=classes, args=args, network=network,
                   extensions=extensions, version=version)


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _short(value, limit=60):
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
