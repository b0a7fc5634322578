"""NetworkSpec: the settings that define a trained network and the input it expects (no Paddle here).

Built once from the configuration, saved in every checkpoint (state.json's "network") and every
exported model (preprocess.json), and read back by eval.py and infer.py, which adopt it unless the
user typed a flag. The flags' defaults and help live in cli/args.py; the allowed values live here.
"""
from dataclasses import MISSING, asdict, dataclass, fields

from utility.errors import UserError

CHOICES = {"neck": ("none", "bnneck"), "neck_feat": ("after", "before"), "last_stride": (1, 2),
           "stem": ("imagenet", "small"), "eval_resize": ("crop", "full"), "pooling": ("avg", "gem")}


@dataclass(frozen=True)
class NetworkSpec:
    model: str              # a builder of models.MODELS, e.g. ResNet50
    embedding_size: int     # 0 keeps the pooled feature
    image_shape: tuple      # (3, H, W) of the network input
    neck: str               # none | bnneck
    neck_feat: str          # with bnneck: the feature "after" or "before" the batch norm
    last_stride: int        # 1 or 2
    stem: str               # imagenet (7x7 stride 2) | small (3x3 stride 1)
    eval_resize: str        # evaluation preprocessing: crop | full
    ink_crop: bool          # cut line drawings to the square around their strokes first
    # Settings added after checkpoints were first written have a default: the value an older record means.
    uncertainty: bool = False  # a head predicts each image's log variance (models/head.py)
    pooling: str = "avg"       # the trunk's global pooling: avg | gem (generalized mean, learned exponent)

    @classmethod
    def names(cls):
        return tuple(field.name for field in fields(cls))

    @classmethod
    def default(cls, name):
        """What a record without setting `name` means (a setting added after records were first written)."""
        return next(field.default for field in fields(cls) if field.name == name and field.default is not MISSING)

    @classmethod
    def from_config(cls, config):
        """The spec of a configuration (a resolved Config, or anything with these attributes; one without a
        setting that has a default gets the default)."""
        return cls(**{field.name: getattr(config, field.name) if field.default is MISSING
                      else getattr(config, field.name, field.default) for field in fields(cls)})

    @classmethod
    def fields_of(cls, record, where):
        """The network settings present in `record` (a dict read from a file), checked. A wrong one is a
        UserError that starts with `where` (e.g. "out/3/state.json: args.") and names the field. Settings
        absent from the record (files older than them) are left out."""
        return {name: _checked(name, record[name], where) for name in cls.names() if name in record}

    @classmethod
    def from_record(cls, record, where):
        """The spec saved as `record` by to_record(); a missing or wrong field is a UserError starting with `where`
        (a field with a default, newer than the record, takes its default)."""
        if not isinstance(record, dict):
            raise UserError(f"{where.rstrip('.')} is not a record of network settings")
        missing = [field.name for field in fields(cls) if field.name not in record and field.default is MISSING]
        if missing:
            raise UserError(f"{where}{missing[0]} is missing")
        return cls(**cls.fields_of(record, where))

    def to_record(self):
        """A JSON-able dict (image_shape as a list)."""
        return {**asdict(self), "image_shape": list(self.image_shape)}


def _checked(name, value, where):
    """`value` of setting `name` as the configuration holds it (image_shape a tuple), or UserError."""
    def wrong(expected):
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:60] + "..."
        return UserError(f"{where}{name} {shown} is not {expected}")

    if name == "model":
        if not isinstance(value, str) or not value:
            raise wrong("a model name")
    elif name == "embedding_size":
        if not _is_int(value) or value < 0:
            raise wrong("a whole number >= 0")
    elif name == "image_shape":
        if not isinstance(value, (list, tuple)) or len(value) != 3 or not all(map(_is_int, value)) \
                or value[0] != 3 or min(value) <= 0:
            raise wrong("3,H,W with H and W above 0 (images are read as RGB)")
        return tuple(value)
    elif name in ("ink_crop", "uncertainty"):
        if not isinstance(value, bool):
            raise wrong("true or false")
    elif value not in CHOICES[name] or isinstance(value, bool):
        raise wrong(f"one of {', '.join(map(str, CHOICES[name]))}")
    return value


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)
