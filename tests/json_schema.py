"""A JSON Schema (draft 2020-12) validator for exactly what Opik's vendored request schemas use.

`tests/opik_api/` holds Opik's published request schemas (see its README). The tests may not
depend on a validator package, so this implements the keywords those files use, and only them.
A schema that uses anything else (another keyword, another `format`, a regular-expression
construct not listed below, a boolean schema) raises `SchemaError` when it is loaded, before any
instance is looked at: a check can never pass because a rule was skipped.

Assertions, with draft 2020-12 semantics:
- `type` (a name or a list of names; `integer` is any number without a fraction, 1.0 included;
  booleans are not numbers), `enum` (JSON equality: 1 equals 1.0, true does not equal 1);
- objects: `required`, `properties`, `additionalProperties` (a schema, applied to the members
  `properties` does not name);
- arrays: `items` (one schema for every item), `minItems`, `maxItems`, `uniqueItems` (JSON
  equality);
- strings: `minLength` (in code points), `pattern` (ECMA-262, unanchored);
- numbers: `minimum`, `maximum` (inclusive);
- `anyOf`;
- `format`, asserted as the files' README asks (a format checker): `uuid` (RFC 9562 text form,
  hex digits of either case), `date-time` (RFC 3339: real calendar dates, `T`/`Z` of either case,
  a leap second only at 23:59:60 UTC), `int32` (a number must be a whole number in
  [-2^31, 2^31 - 1]). A format applies to strings (`uuid`, `date-time`) or numbers (`int32`)
  only; other instances pass it.
Annotations, not asserted: `$schema` (which must name draft 2020-12), `$id`, `$comment`,
`title`, `description`.

`pattern` runs on Python's `re` after translating what ECMA-262 means differently: `\\s` / `\\S`
(ECMA's whitespace: Unicode spaces and line terminators plus U+FEFF, without Python's U+001C-
U+001F and U+0085), `\\d` / `\\w` (ASCII only), `.` (not a line terminator), `$` (the end of
the string only). Escapes `\\b`, `\\p{...}`, back-references, lookbehind, named groups, and the
empty classes `[]` / `[^]` are not translated: they raise `SchemaError`.
"""

import json
import re
from collections.abc import Callable
from functools import cache
from pathlib import Path

SCHEMAS = Path(__file__).parent / "opik_api"
DRAFT_2020_12 = "https://json-schema.org/draft/2020-12/schema"
ANNOTATIONS = frozenset({"$schema", "$id", "$comment", "title", "description"})
TYPES = frozenset({"object", "array", "string", "integer", "number", "boolean", "null"})
INT32 = (-(2**31), 2**31 - 1)

ECMA_SPACE = "\t\n\v\f\r \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
ESCAPES_OUTSIDE = {"s": f"[{ECMA_SPACE}]", "S": f"[^{ECMA_SPACE}]", "d": "[0-9]", "D": "[^0-9]",
                   "w": "[A-Za-z0-9_]", "W": "[^A-Za-z0-9_]"}
ESCAPES_INSIDE = {"s": ECMA_SPACE, "d": "0-9", "w": "A-Za-z0-9_"}
ANY_CHARACTER = {"\\s\\S", "\\S\\s", "\\d\\D", "\\D\\d", "\\w\\W", "\\W\\w"}
SAME_ESCAPES = re.compile(r"[tnrfv]|u[0-9a-fA-F]{4}|x[0-9a-fA-F]{2}")

UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
DATE_TIME = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.[0-9]+)?"
                       r"(?:[Zz]|([+-])([0-9]{2}):([0-9]{2}))")


class SchemaError(Exception):
    """The schema uses something this validator does not implement, or uses it wrongly."""


class ValidationError(ValueError):
    """The instance breaks the schema; `problems` lists each place and why."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


class Schema:
    """A schema checked once for what it uses: `errors(instance)` lists what is wrong."""

    def __init__(self, schema: object):
        check_schema(schema)
        self.schema = schema

    def errors(self, instance: object) -> list[str]:
        return _errors(self.schema, instance, "")

    def validate(self, instance: object) -> None:
        if problems := self.errors(instance):
            raise ValidationError(problems)


@cache
def opik_schema(name: str) -> Schema:
    """The vendored schema `tests/opik_api/<name>.json`, checked."""
    return Schema(json.loads((SCHEMAS / f"{name}.json").read_text(encoding="utf-8")))


# --- the schema itself -------------------------------------------------------------------------

def check_schema(schema: object, where: str = "#") -> None:
    """Raise `SchemaError` unless `schema` and all its subschemas use only what is implemented."""
    if not isinstance(schema, dict):
        raise SchemaError(f"{where}: only object schemas are implemented, not {schema!r}")
    for key, value in schema.items():
        if key in ANNOTATIONS:
            if key == "$schema" and value != DRAFT_2020_12:
                raise SchemaError(f"{where}: $schema {value!r} is not draft 2020-12")
            continue
        if key not in _SCHEMA_CHECKS:
            raise SchemaError(f"{where}: keyword {key!r} is not implemented")
        if not _SCHEMA_CHECKS[key](value, f"{where}/{key}"):
            raise SchemaError(f"{where}: {key} {value!r} is not a valid value")


def _count(value: object) -> bool:
    return type(value) is int and value >= 0


def _named_subschemas(value: object, where: str) -> bool:
    if not isinstance(value, dict):
        return False
    for name, sub in value.items():
        check_schema(sub, f"{where}/{name}")
    return True


def _listed_subschemas(value: object, where: str) -> bool:
    if not (isinstance(value, list) and value):
        return False
    for index, sub in enumerate(value):
        check_schema(sub, f"{where}/{index}")
    return True


def _pattern_ok(value: object, where: str) -> bool:
    if not isinstance(value, str):
        return False
    _compiled(value)
    return True


def _subschema(value: object, where: str) -> bool:
    check_schema(value, where)  # `items` in its array form (draft 2019 and before) lands here too
    return True


_SCHEMA_CHECKS: dict[str, Callable[[object, str], bool]] = {
    "type": lambda v, _: v in TYPES if isinstance(v, str) else (
        isinstance(v, list) and bool(v) and all(isinstance(t, str) and t in TYPES for t in v)),
    "enum": lambda v, _: isinstance(v, list),
    "required": lambda v, _: isinstance(v, list) and all(isinstance(n, str) for n in v) and len(set(v)) == len(v),
    "properties": _named_subschemas,
    "additionalProperties": _subschema,
    "items": _subschema,
    "anyOf": _listed_subschemas,
    "minItems": lambda v, _: _count(v),
    "maxItems": lambda v, _: _count(v),
    "minLength": lambda v, _: _count(v),
    "uniqueItems": lambda v, _: isinstance(v, bool),
    "minimum": lambda v, _: _is_number(v),
    "maximum": lambda v, _: _is_number(v),
    "pattern": _pattern_ok,
    "format": lambda v, _: v in _FORMATS,
}


# --- ECMA-262 patterns on Python's re ----------------------------------------------------------

@cache
def _compiled(pattern: str) -> re.Pattern:
    try:
        return re.compile(_python_regex(pattern))
    except re.error as exc:
        raise SchemaError(f"pattern {pattern!r}: {exc}") from None


def _python_regex(pattern: str) -> str:
    """`pattern` (ECMA-262) as a Python regular expression of the same meaning."""
    out, i = [], 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            escaped = _escape(pattern, i)
            out.append(ESCAPES_OUTSIDE.get(escaped[1:], escaped))
            i += len(escaped)
        elif char == "[":
            end = _class_end(pattern, i)
            out.append(_python_class(pattern[i + 1:end]))
            i = end + 1
        elif char == "(" and pattern.startswith("(?", i):
            if pattern[i + 2:i + 3] not in (":", "=", "!"):
                raise SchemaError(f"pattern {pattern!r}: only (?:, (?= and (?! groups are implemented")
            out.append(pattern[i:i + 3])
            i += 3
        else:
            out.append({".": "[^\n\r\u2028\u2029]", "$": r"\Z"}.get(char, char))
            i += 1
    return "".join(out)


def _escape(pattern: str, i: int) -> str:
    """The escape sequence starting at `pattern[i]` (a backslash), if it is implemented."""
    rest = pattern[i + 1:]
    if rest[:1] in ESCAPES_OUTSIDE or rest[:1] and not rest[:1].isalnum():
        return pattern[i:i + 2]
    if same := SAME_ESCAPES.match(rest):
        return "\\" + same.group()
    raise SchemaError(f"pattern {pattern!r}: the escape \\{rest[:1]} is not implemented")


def _class_end(pattern: str, start: int) -> int:
    j = start + 1 + pattern.startswith("^", start + 1)
    if pattern[j:j + 1] == "]":
        raise SchemaError(f"pattern {pattern!r}: the empty classes [] and [^] are not implemented")
    while j < len(pattern) and pattern[j] != "]":
        j += 2 if pattern[j] == "\\" else 1
    if j >= len(pattern):
        raise SchemaError(f"pattern {pattern!r}: unterminated character class")
    return j


def _python_class(body: str) -> str:
    negated, inner = body.startswith("^"), body.removeprefix("^")
    if inner in ANY_CHARACTER:
        return "[^\\s\\S]" if negated else "[\\s\\S]"
    out, i = [], 0
    while i < len(inner):
        if inner[i] == "\\":
            escaped = _escape(inner, i)
            if escaped[1:] in ESCAPES_OUTSIDE and escaped[1:] not in ESCAPES_INSIDE:
                raise SchemaError(f"class [{body}]: {escaped} inside a class is not implemented")
            out.append(ESCAPES_INSIDE.get(escaped[1:], escaped))
            i += len(escaped)
        else:
            out.append("\\[" if inner[i] == "[" else inner[i])
            i += 1
    return "[" + "^" * negated + "".join(out) + "]"


# --- formats -----------------------------------------------------------------------------------

def _is_uuid(text: str) -> bool:
    return UUID.fullmatch(text) is not None


def _days_in_month(year: int, month: int) -> int:
    if month == 2:
        return 29 if year % 4 == 0 and (year % 100 != 0 or year % 400 == 0) else 28
    return 30 if month in (4, 6, 9, 11) else 31


def _is_date_time(text: str) -> bool:
    match = DATE_TIME.fullmatch(text)
    if match is None:
        return False
    year, month, day, hour, minute, second = (int(part) for part in match.groups()[:6])
    sign = match.group(7)
    offset = int(match.group(8)) * 60 + int(match.group(9)) if sign else 0
    if sign and (int(match.group(8)) > 23 or int(match.group(9)) > 59):
        return False
    if not (1 <= month <= 12 and 1 <= day <= _days_in_month(year, month)):
        return False
    if hour > 23 or minute > 59 or second > 60:
        return False
    utc_minute = (hour * 60 + minute - (offset if sign == "+" else -offset)) % 1440
    return second < 60 or utc_minute == 23 * 60 + 59  # a leap second is the last second of a UTC day


def _is_int32(number: int | float) -> bool:
    return _is_integer(number) and INT32[0] <= number <= INT32[1]


_FORMATS: dict[str, tuple[Callable[[object], bool], Callable[..., bool]]] = {
    "uuid": (lambda x: isinstance(x, str), _is_uuid),
    "date-time": (lambda x: isinstance(x, str), _is_date_time),
    "int32": (lambda x: _is_number(x), _is_int32),
}


# --- instances ---------------------------------------------------------------------------------

def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_integer(value: object) -> bool:
    return _is_number(value) and (isinstance(value, int) or value.is_integer())


_IS_TYPE: dict[str, Callable[[object], bool]] = {
    "object": lambda x: isinstance(x, dict),
    "array": lambda x: isinstance(x, list),
    "string": lambda x: isinstance(x, str),
    "integer": _is_integer,
    "number": _is_number,
    "boolean": lambda x: isinstance(x, bool),
    "null": lambda x: x is None,
}


def json_key(value: object) -> object:
    """A hashable key equal for two JSON values exactly when JSON says they are equal."""
    if isinstance(value, bool):
        return ("boolean", value)
    if _is_number(value):
        return ("number", value)  # Python's 1 == 1.0, and their hashes agree
    if isinstance(value, list):
        return ("array", tuple(json_key(item) for item in value))
    if isinstance(value, dict):
        return ("object", frozenset((name, json_key(item)) for name, item in value.items()))
    return (type(value).__name__, value)


def _pointer(path: str, name: object) -> str:
    return f"{path}/{str(name).replace('~', '~0').replace('/', '~1')}"


def _at(path: str, message: str) -> list[str]:
    return [f"{path or '/'}: {message}"]


def _errors(schema: dict, instance: object, path: str) -> list[str]:
    return [problem for key, value in schema.items() if key in _ASSERTIONS
            for problem in _ASSERTIONS[key](value, instance, path, schema)]


def _type(names: str | list, instance: object, path: str, _) -> list[str]:
    if any(_IS_TYPE[name](instance) for name in ([names] if isinstance(names, str) else names)):
        return []
    return _at(path, f"{instance!r:.80} is not of type {names}")


def _enum(values: list, instance: object, path: str, _) -> list[str]:
    if json_key(instance) in {json_key(value) for value in values}:
        return []
    return _at(path, f"{instance!r:.80} is not one of {values}")


def _required(names: list, instance: object, path: str, _) -> list[str]:
    if not isinstance(instance, dict):
        return []
    return [problem for name in names if name not in instance for problem in _at(path, f"{name!r} is required")]


def _properties(subschemas: dict, instance: object, path: str, _) -> list[str]:
    if not isinstance(instance, dict):
        return []
    return [problem for name, sub in subschemas.items() if name in instance
            for problem in _errors(sub, instance[name], _pointer(path, name))]


def _additional(sub: dict, instance: object, path: str, schema: dict) -> list[str]:
    if not isinstance(instance, dict):
        return []
    named = schema.get("properties", {})
    return [problem for name, item in instance.items() if name not in named
            for problem in _errors(sub, item, _pointer(path, name))]


def _items(sub: dict, instance: object, path: str, _) -> list[str]:
    if not isinstance(instance, list):
        return []
    return [problem for index, item in enumerate(instance) for problem in _errors(sub, item, _pointer(path, index))]


def _any_of(branches: list, instance: object, path: str, _) -> list[str]:
    failures = [_errors(branch, instance, path) for branch in branches]
    if not all(failures):
        return []
    return _at(path, f"matches no branch of anyOf ({' | '.join('; '.join(f) for f in failures)})")


def _bound(kind: str, fails: Callable[[object, int | float], bool], message: str) -> Callable[..., list[str]]:
    """An assertion on one kind of instance ("array", "string" or "number"): `fails(x, limit)`."""
    def check(limit: int | float, instance: object, path: str, _) -> list[str]:
        return _at(path, message.format(limit)) if _IS_TYPE[kind](instance) and fails(instance, limit) else []
    return check


def _unique(flag: bool, instance: object, path: str, _) -> list[str]:
    if not flag or not isinstance(instance, list) or len({json_key(x) for x in instance}) == len(instance):
        return []
    return _at(path, "items are not unique")


def _pattern(pattern: str, instance: object, path: str, _) -> list[str]:
    if not isinstance(instance, str) or _compiled(pattern).search(instance):
        return []
    return _at(path, f"{instance!r:.80} does not match {pattern!r}")


def _format(name: str, instance: object, path: str, _) -> list[str]:
    applies, holds = _FORMATS[name]
    return _at(path, f"{instance!r:.80} is not a valid {name}") if applies(instance) and not holds(instance) else []


_ASSERTIONS: dict[str, Callable[[object, object, str, dict], list[str]]] = {
    "type": _type,
    "enum": _enum,
    "required": _required,
    "properties": _properties,
    "additionalProperties": _additional,
    "items": _items,
    "anyOf": _any_of,
    "minItems": _bound("array", lambda x, n: len(x) < n, "fewer than {} items"),
    "maxItems": _bound("array", lambda x, n: len(x) > n, "more than {} items"),
    "uniqueItems": _unique,
    "minLength": _bound("string", lambda x, n: len(x) < n, "shorter than {} characters"),
    "minimum": _bound("number", lambda x, n: x < n, "less than the minimum {}"),
    "maximum": _bound("number", lambda x, n: x > n, "greater than the maximum {}"),
    "pattern": _pattern,
    "format": _format,
}

KEYWORDS = frozenset(_SCHEMA_CHECKS) | ANNOTATIONS  # every keyword implemented, annotations included
FORMATS = frozenset(_FORMATS)
