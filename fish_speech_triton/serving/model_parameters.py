"""A model's `config.pbtxt` parameters, read strictly: a misspelled, missing or out-of-range value stops the
model from loading with a message that names the parameter, instead of being taken for a default."""

from __future__ import annotations

import difflib
from collections.abc import Sequence

from fish_speech_triton.errors import InputError

# Parameters that Triton's Python backend itself reads from a model's config (not the model's own).
BACKEND_PARAMETERS = frozenset({"EXECUTION_ENV_PATH"})


class ModelParameters(dict[str, str]):
    """The parameters as strings (a plain dict), plus typed reads with defaults for absent keys.

    Every typed read records its key, so `refuse_unknown` can then name a key that nothing read: a typo
    such as `kv_slot` would otherwise leave `kv_slots` at its default without a word.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.known: set[str] = set()

    def _fail(self, name: str, expected: str) -> InputError:
        return InputError(f"config.pbtxt parameter {name} must be {expected}, got {self[name]!r}")

    def required(self, name: str) -> str:
        self.known.add(name)
        if not self.get(name, "").strip():
            raise InputError(f"config.pbtxt parameter {name} is missing: the model cannot load without it")
        return self[name].strip()

    def text(self, name: str, default: str) -> str:
        self.known.add(name)
        return self[name].strip() if name in self else default

    def integer(self, name: str, default: int, minimum: int = 0, maximum: int | None = None) -> int:
        return int(self._in_range(name, default, minimum, maximum, int, "an integer"))

    def number(self, name: str, default: float, minimum: float = 0.0) -> float:
        return self._in_range(name, default, minimum, None, float, "a number")

    def _in_range(
        self, name: str, default: float, minimum: float, maximum: float | None, cast: type, kind: str
    ) -> float:
        self.known.add(name)
        if name not in self:
            return default
        try:
            value = cast(self[name].strip())
        except ValueError:
            value = float("nan")
        if maximum is not None and not minimum <= value <= maximum:
            raise self._fail(name, f"{kind} from {minimum:g} to {maximum:g}")
        if not value >= minimum:  # NaN too
            raise self._fail(name, f"{kind} of at least {minimum:g}")
        return value

    def flag(self, name: str, default: bool) -> bool:
        self.known.add(name)
        if name not in self:
            return default
        value = self[name].strip().lower()
        if value not in ("true", "false"):
            raise self._fail(name, "true or false")
        return value == "true"

    def choice(self, name: str, default: str, choices: Sequence[str]) -> str:
        self.known.add(name)
        if name not in self:
            return default
        value = self[name].strip().lower()
        if value not in choices:
            raise self._fail(name, f"one of {', '.join(choices)}")
        return value

    def refuse_unknown(self) -> None:
        """Call after every read: a key that no read asked for is a typo or a parameter of another model."""
        for name in sorted(set(self) - self.known - BACKEND_PARAMETERS):
            close = difflib.get_close_matches(name, sorted(self.known), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise InputError(
                f"config.pbtxt parameter {name} is not one of this model's{hint}; "
                f"it reads {', '.join(sorted(self.known))}"
            )
