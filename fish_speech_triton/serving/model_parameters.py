"""A model's `config.pbtxt` parameters, read strictly: a misspelled or out-of-range value stops the model from
loading with a message that names the parameter, instead of being taken for a default."""

from __future__ import annotations

from collections.abc import Sequence

from fish_speech_triton.errors import InputError


class ModelParameters(dict[str, str]):
    """The parameters as strings (a plain dict), plus typed reads with defaults for absent keys."""

    def _fail(self, name: str, expected: str) -> InputError:
        return InputError(f"config.pbtxt parameter {name} must be {expected}, got {self[name]!r}")

    def integer(self, name: str, default: int, minimum: int = 0) -> int:
        return int(self._at_least(name, default, minimum, int, "an integer"))

    def number(self, name: str, default: float, minimum: float = 0.0) -> float:
        return self._at_least(name, default, minimum, float, "a number")

    def _at_least(self, name: str, default: float, minimum: float, cast: type, kind: str) -> float:
        if name not in self:
            return default
        try:
            value = cast(self[name].strip())
        except ValueError:
            value = float("nan")
        if not value >= minimum:  # NaN too
            raise self._fail(name, f"{kind} of at least {minimum:g}")
        return value

    def flag(self, name: str, default: bool) -> bool:
        if name not in self:
            return default
        value = self[name].strip().lower()
        if value not in ("true", "false"):
            raise self._fail(name, "true or false")
        return value == "true"

    def choice(self, name: str, default: str, choices: Sequence[str]) -> str:
        if name not in self:
            return default
        value = self[name].strip().lower()
        if value not in choices:
            raise self._fail(name, f"one of {', '.join(choices)}")
        return value
