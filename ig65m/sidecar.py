"""The sidecar of a features file (`feats.npy` -> `feats.json`): one dataclass that reads,
validates and writes it.

Known fields are typed and checked: `source` (the video), `model`, `weights_sha256`, `clips` (one
[start, end] pair of seconds per feature row), `interrupted`. Every other key (clip settings,
pooling, and whatever other tools add: `backend`, `precision`, `onnx`, `features_sha256`, ...) is
kept as it is, in its order, and written back unchanged. Torch-free.
"""

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from ig65m.errors import Ig65mError

_TEXT_FIELDS = ("source", "model", "weights_sha256")


@dataclass
class Sidecar:
    """A features file's sidecar. `extra` holds every key this class does not know, in order."""

    source: str | None = None
    model: str | None = None
    weights_sha256: str | None = None
    clips: list | None = None  # [(start, end)] seconds, one per feature row
    interrupted: bool | None = None
    extra: dict = field(default_factory=dict)
    name: str = "sidecar"  # where it came from, for error messages

    @classmethod
    def from_dict(cls, data, *, name="sidecar", rows=None):
        """Validate parsed JSON -> Sidecar; `rows` (the features' row count) checks `clips`.

        Ig65mError (one line naming the file) for a non-object, a mistyped known field, or clips
        that are not `rows` finite [start, end] pairs.
        """
        if not isinstance(data, dict):
            raise Ig65mError(f"{name} must be a JSON object of the extraction's settings, got "
                             f"{_json_kind(data)}")
        for key in _TEXT_FIELDS:
            if data.get(key) is not None and not isinstance(data[key], str):
                raise Ig65mError(f"{name}: {key!r} must be a string, got {_json_kind(data[key])}")
        interrupted = data.get("interrupted")
        if interrupted is not None and not isinstance(interrupted, bool):
            raise Ig65mError(f"{name}: 'interrupted' must be true or false")
        known = {"source", "model", "weights_sha256", "clips", "interrupted"}
        sidecar = cls(source=data.get("source"), model=data.get("model"),
                      weights_sha256=data.get("weights_sha256"),
                      clips=_clips(data.get("clips"), name), interrupted=interrupted,
                      extra={k: v for k, v in data.items() if k not in known}, name=name)
        if rows is not None:
            sidecar.check_rows(rows)
        return sidecar

    @classmethod
    def read(cls, path, *, rows=None):
        """The sidecar file at `path` -> Sidecar, or None when there is none. Something else there
        (a folder, a link to nothing) is an Ig65mError, not read as "no sidecar": the features'
        metadata (source video, clip times, model) would be lost without a word."""
        path = Path(path)
        if not path.is_file():
            if path.is_dir() or path.is_symlink():
                kind = "a folder" if path.is_dir() else "a broken link"
                raise Ig65mError(f"sidecar {path} is {kind}, not a JSON file")
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as err:
            raise Ig65mError(f"sidecar {path} is not valid JSON ({err})") from None
        return cls.from_dict(data, name=f"sidecar {path}", rows=rows)

    def check_rows(self, rows):
        """Ig65mError unless `clips` (when present) has one pair per feature row."""
        if self.clips is not None and len(self.clips) != rows:
            raise Ig65mError(f"{self.name} lists {len(self.clips)} clips for {rows} feature rows; "
                             f"it does not belong to these features")

    def clip_times(self, rows):
        """[(start, end)] per row; (None, None) each when the sidecar has no clips."""
        self.check_rows(rows)
        return list(self.clips) if self.clips is not None else [(None, None)] * rows

    def to_dict(self):
        """The JSON object: known fields first (those set), then every other key unchanged."""
        data = {key: getattr(self, key) for key in _TEXT_FIELDS if getattr(self, key) is not None}
        data.update(self.extra)
        if self.clips is not None:
            data["clips"] = [[start, end] for start, end in self.clips]
        if self.interrupted is not None:
            data["interrupted"] = self.interrupted
        return data

    def get(self, key, default=None):
        """Any field by its JSON name (known or extra)."""
        if key in self.extra:
            return self.extra[key]
        return getattr(self, key, default) if key in self.__dataclass_fields__ else default


def _json_kind(value):
    return {list: "a list", str: "a string", dict: "an object", bool: "a boolean",
            type(None): "null"}.get(type(value), "a number")


def _clips(clips, name):
    if clips is None:
        return None
    message = f"{name}: 'clips' must be a list of [start, end] seconds"
    if not isinstance(clips, list):
        raise Ig65mError(f"{message}, got {_json_kind(clips)}")
    pairs = []
    for pair in clips:
        if (not isinstance(pair, list) or len(pair) != 2
                or not all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in pair)
                or not all(math.isfinite(t) for t in pair)):
            raise Ig65mError(f"{message}; clip {len(pairs)} is {json.dumps(pair)[:40]}")
        pairs.append((float(pair[0]), float(pair[1])))
    return pairs


def validate(meta, *, name="sidecar", rows=None):
    """A sidecar dict as written or read -> the same dict, checked (unknown keys untouched)."""
    return Sidecar.from_dict(meta, name=name, rows=rows).to_dict() if meta is not None else None
