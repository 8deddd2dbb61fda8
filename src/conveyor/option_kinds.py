"""The machinery behind conveyor's option table (conveyor.options): an option is declared once,
as a typed attribute of the settings class that holds it, with its flags, default, parser and
help. From the declarations come the command-line split, `conveyor run --help`, the
`CONVEYOR_*` environment variables, the `[tool.conveyor]` table, and the settings handed to
worker processes (the options declared on `WorkerOptions`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Generic, TypeVar, overload

from conveyor.errors import UsageError

T = TypeVar("T")
VALUE, FLAG, REPEAT = "value", "flag", "repeat"

# A parser gets the option's flag (for its error message) and the raw text.
Parser = Callable[[str, str], T]


class Option(Generic[T]):
    """A data descriptor: on an instance, the option's value (its default until set)."""

    def __init__(
        self,
        flags: tuple[str, ...],
        help: str,
        default: T,
        parse: Parser[T],
        metavar: str = "",
        *,
        kind: str = VALUE,
        settable: bool = True,
        key: str | None = None,
    ) -> None:
        self.flags = flags
        self.help = help
        self.default = default
        self.parse = parse
        self.metavar = metavar
        self.kind = kind  # VALUE: one value; FLAG: on when given; REPEAT: may be given again
        self.settable = settable  # may come from the environment or pyproject.toml
        # The name in [tool.conveyor] and, upper-cased, in CONVEYOR_<KEY>.
        self.key = key or flags[-1].lstrip("-")
        self.field = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.field = name

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> Option[T]: ...
    @overload
    def __get__(self, obj: object, owner: type | None = None) -> T: ...
    def __get__(self, obj: object | None, owner: type | None = None) -> T | Option[T]:
        if obj is None:
            return self
        value: T = obj.__dict__.get(self.field, self.default)
        return value

    def __set__(self, obj: object, value: T) -> None:
        obj.__dict__[self.field] = value

    @property
    def env(self) -> str:
        return "CONVEYOR_" + self.key.upper().replace("-", "_")

    @property
    def label(self) -> str:
        return ", ".join(self.flags) + (f" {self.metavar}" if self.metavar else "")

    def __repr__(self) -> str:
        return f"Option({self.flags[-1]})"


def declared(cls: type) -> Iterator[Option[Any]]:
    """The options of a settings class, its own first, then its bases', in declaration order."""
    for klass in cls.__mro__:
        for value in vars(klass).values():
            if isinstance(value, Option):
                yield value


class OptionSet:
    """Base of classes whose attributes are options: keyword construction, equality and
    `replace` by value, and the values to hand over as plain JSON."""

    def __init__(self, **values: Any) -> None:
        fields = {option.field for option in declared(type(self))}
        for name, value in values.items():
            if name not in fields and not hasattr(type(self), name):
                raise TypeError(f"{type(self).__name__} has no option {name!r}")
            setattr(self, name, value)

    def option_values(self) -> dict[str, Any]:
        return {option.field: getattr(self, option.field) for option in declared(type(self))}

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return vars(self) | self.option_values() == vars(other) | other.option_values()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in {**vars(self), **self.option_values()}.items())
        return f"{type(self).__name__}({shown})"


# -- parsers ------------------------------------------------------------------------------


def text(flag: str, raw: str) -> str:
    return raw


def optional_text(flag: str, raw: str) -> str | None:
    return raw


def switch(flag: str, raw: str) -> bool:
    return raw != ""


def repeated(flag: str, raw: str) -> tuple[str, ...]:
    return tuple(item for item in raw.split("\0") if item)


def _number(flag: str, raw: str, kind: type[float] | type[int], minimum: float) -> float:
    try:
        number = kind(raw)
    except ValueError:
        number = minimum - 1
    if number < minimum:
        raise UsageError(f"{flag} expects a number of at least {minimum}, got {raw!r}.")
    return number


def count(minimum: int) -> Parser[int]:
    def parse(flag: str, raw: str) -> int:
        return int(_number(flag, raw, int, minimum))

    return parse


def optional_count(minimum: int) -> Parser[int | None]:
    def parse(flag: str, raw: str) -> int | None:
        return int(_number(flag, raw, int, minimum))

    return parse


def seconds(minimum: float) -> Parser[float]:
    def parse(flag: str, raw: str) -> float:
        return _number(flag, raw, float, minimum)

    return parse


def optional_seconds(minimum: float, auto: str | None = None) -> Parser[float | None]:
    """Seconds, or None for `auto` (when given)."""

    def parse(flag: str, raw: str) -> float | None:
        if auto is not None and raw == auto:
            return None
        return _number(flag, raw, float, minimum)

    return parse


def optional_number(minimum: float) -> Parser[float | None]:
    return optional_seconds(minimum)


def fraction(flag: str, raw: str) -> float:
    value = _number(flag, raw, float, 0)
    if value > 1:
        raise UsageError(f"{flag} is a fraction of the build's tests (0 to 1), got {value}.")
    return value


def choice(choices: Sequence[str], aliases: dict[str, str] | None = None) -> Parser[str]:
    def parse(flag: str, raw: str) -> str:
        value = (aliases or {}).get(raw, raw)
        if value not in choices:
            shown = ", ".join([*choices, *(aliases or {})])
            raise UsageError(f"{flag} must be one of {shown}, got {raw!r}.")
        return value

    return parse
