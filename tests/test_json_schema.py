"""The vendored Opik request schemas and the small validator that checks bodies against them
(tests/json_schema.py, tests/opik_api/)."""

import json
import re
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.claude_code_corpus import materialized
from tests.json_schema import (
    FORMATS,
    KEYWORDS,
    SCHEMAS,
    Schema,
    SchemaError,
    ValidationError,
    json_key,
    opik_schema,
)

VENDORED = sorted(path.stem for path in SCHEMAS.glob("*.json"))
ECMA_WHITESPACE = set("\t\n\v\f\r \u00a0\u1680\u2028\u2029\u202f\u205f\u3000\ufeff") | {
    chr(c) for c in range(0x2000, 0x200B)}
NOT_BLANK = "^\\s*(\\S[\\s\\S]*\\S|\\S)\\s*$"  # the pattern of every project_name


def used(schema: object, keywords: set, formats: set) -> None:
    """Collect the keywords and formats a schema uses, walking only into subschemas."""
    for key, value in schema.items():
        keywords.add(key)
        if key == "format":
            formats.add(value)
        elif key == "properties":
            for sub in value.values():
                used(sub, keywords, formats)
        elif key in ("items", "additionalProperties"):
            used(value, keywords, formats)
        elif key == "anyOf":
            for sub in value:
                used(sub, keywords, formats)


def test_the_vendored_files_are_the_ones_the_readme_describes():
    readme = (SCHEMAS / "README.md").read_text()
    commit = re.search(r"commit\s+`([0-9a-f]{40})`", readme).group(1)
    assert set(VENDORED) == {"Trace_Write", "Span_Write", "TraceBatch_Write", "SpanBatch_Write", "TraceUpdate",
                             "SpanUpdate", "SpanBatchUpdate", "TraceBatchUpdate", "ErrorInfo_Write"}
    for name in VENDORED:
        schema = json.loads((SCHEMAS / f"{name}.json").read_text())
        assert f"`{name}.json`" in readme
        assert schema["title"] == name and f"(commit {commit})" in schema["$comment"]


def test_the_validator_implements_exactly_the_keywords_and_formats_the_schemas_use():
    keywords, formats = set(), set()
    for name in VENDORED:
        used(json.loads((SCHEMAS / f"{name}.json").read_text()), keywords, formats)
        opik_schema(name)  # loads: nothing unimplemented
    assert keywords == KEYWORDS
    assert formats == FORMATS


@pytest.mark.parametrize("schema, valid, invalid", [
    ({"type": "string"}, "a", 1),
    ({"type": "integer"}, 1.0, 1.5),
    ({"type": "integer"}, -3, True),
    ({"type": "number"}, 1.5, True),
    ({"type": "number"}, 0, "0"),
    ({"type": "boolean"}, False, 0),
    ({"type": "null"}, None, 0),
    ({"type": "object"}, {}, []),
    ({"type": "array"}, [], {}),
    ({"type": ["string", "null"]}, None, 1),
    ({"enum": ["general", "tool", "llm", "guardrail"]}, "llm", "agent"),
    ({"enum": [1, "a"]}, 1.0, True),
    ({"required": ["start_time"]}, {"start_time": None}, {"end_time": "x"}),
    ({"properties": {"a": {"type": "string"}}}, {"a": "x", "b": 1}, {"a": 1}),
    ({"properties": {"a": {}}, "additionalProperties": {"type": "integer"}}, {"a": "x", "b": 2}, {"a": 1, "b": "x"}),
    ({"items": {"type": "string"}}, ["a", "b"], ["a", 1]),
    ({"anyOf": [{"type": "object"}, {"type": "array", "items": {"type": "object"}}, {"type": "string"}]},
     [{}], [{}, 1]),
    ({"minItems": 1}, [0], []),
    ({"maxItems": 2}, [0, 1], [0, 1, 2]),
    ({"uniqueItems": True}, [1, True, "1", None, [1], {"a": 1}], [1, 1.0]),
    ({"uniqueItems": True}, [{"a": [1, 2]}, {"a": [2, 1]}], [{"a": [1.0], "b": 2}, {"b": 2, "a": [1]}]),
    ({"uniqueItems": False}, [1, 1], "the keyword off asserts nothing"),
    ({"minLength": 1}, "\U0001f600", ""),  # one code point, four UTF-8 bytes
    ({"minimum": 0.0}, 0, -0.01),
    ({"maximum": 2147483647}, 2147483647, 2147483648),
    ({"pattern": "b"}, "abc", "ac"),  # unanchored
    ({"pattern": NOT_BLANK}, " x \n", " \t\n\u3000"),
    ({"format": "uuid"}, "01A20B41-EF23-7D4E-9D6B-85191069CB2A", "01a20b41-ef23-7d4e-9d6b-85191069cb2g"),
    ({"format": "date-time"}, "2026-11-24T01:53:20.163456Z", "2026-02-29T01:53:20Z"),
    ({"format": "int32"}, -(2**31), 2**31),
])
def test_each_keyword_accepts_a_valid_and_refuses_an_invalid_instance(schema, valid, invalid):
    checked = Schema(schema)
    assert checked.errors(valid) == []
    if schema.get("uniqueItems") is False:
        return
    problems = checked.errors(invalid)
    assert len(problems) == 1, problems
    with pytest.raises(ValidationError):
        checked.validate(invalid)


@pytest.mark.parametrize("schema, other_type", [
    ({"required": ["a"]}, "a"), ({"properties": {"a": {"type": "string"}}}, ["a"]),
    ({"additionalProperties": {"type": "string"}}, [1]), ({"items": {"type": "string"}}, {"a": 1}),
    ({"minItems": 1}, ""), ({"maxItems": 0}, "ab"), ({"uniqueItems": True}, {"a": 1, "b": 1}),
    ({"minLength": 3}, 1), ({"minimum": 0}, "-1"), ({"maximum": 0}, [1]), ({"pattern": "^a$"}, 5),
    ({"format": "uuid"}, 5), ({"format": "date-time"}, None), ({"format": "int32"}, "2147483648"),
])
def test_a_keyword_for_one_type_lets_other_types_through(schema, other_type):
    assert Schema(schema).errors(other_type) == []


def test_annotations_assert_nothing():
    schema = Schema({"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": "https://x/y.json",
                     "$comment": "c", "title": "t", "description": "d"})
    assert schema.errors(1) == schema.errors({"any": ["thing"]}) == []


def test_a_problem_names_where_it_is():
    body = {"spans": [{"start_time": "2026-11-24T01:53:20Z", "usage": {"a/b": 1.5}, "id": "x"}]}
    problems = opik_schema("SpanBatch_Write").errors(body)
    assert sorted(problems) == ["/spans/0/id: 'x' is not a valid uuid",
                                "/spans/0/usage/a~1b: 1.5 is not a valid int32",
                                "/spans/0/usage/a~1b: 1.5 is not of type integer"]
    assert opik_schema("TraceUpdate").errors([]) == ["/: [] is not of type object"]
    assert opik_schema("SpanBatchUpdate").errors({"ids": []}) == ["/: 'update' is required", "/ids: fewer than 1 items"]


@pytest.mark.parametrize("schema", [
    True,
    {"$ref": "#/definitions/x"},
    {"oneOf": [{"type": "string"}]},
    {"maxLength": 3},
    {"properties": {"never_sent": {"exclusiveMinimum": 0}}},  # refused when loaded, whatever the instance
    {"items": [{"type": "string"}]},  # the array form of draft 2019 and before
    {"format": "email"},
    {"type": "int"},
    {"minItems": -1},
    {"required": ["a", "a"]},
    {"anyOf": []},
    {"$schema": "http://json-schema.org/draft-07/schema#"},
    {"pattern": "\\bword"},
    {"pattern": "(?<=a)b"},
    {"pattern": "(?P<name>a)"},
    {"pattern": "(a)\\1"},
    {"pattern": "\\p{L}"},
    {"pattern": "[^\\S]"},
    {"pattern": "[]"},
    {"pattern": "[a"},
])
def test_anything_not_implemented_is_refused_when_the_schema_is_loaded(schema):
    with pytest.raises(SchemaError):
        Schema(schema)


@pytest.mark.parametrize("pattern, matches, does_not", [
    ("^a$", "a", "a\n"),  # ECMA's $ is the end of the string; Python's also matches before a last \n
    ("^\\d$", "7", "\u0663"),  # ECMA's \d is ASCII
    ("^\\w$", "_", "\u00e9"),
    ("^\\s$", "\ufeff", "\x1c"),  # ECMA's whitespace has U+FEFF and lacks U+001C
    ("^\\S$", "\x85", "\u2028"),
    ("^.$", "\x85", "\u2028"),  # ECMA's . stops at line terminators, U+2028 included
    ("^[\\s\\S]$", "\n", ""),
    ("^[\\d-]+$", "1-2", "1a"),
    ("^\\u0041\\x42\\.$", "AB.", "ABx"),
    ("^(?:a|b)(?!c)", "ab", "ac"),
])
def test_patterns_mean_what_ecma_262_means(pattern, matches, does_not):
    schema = Schema({"pattern": pattern})
    assert schema.errors(matches) == []
    assert schema.errors(does_not) != []


@pytest.mark.parametrize("text, valid", [
    ("1985-04-12T23:20:50.52Z", True),
    ("1996-12-19T16:39:57-08:00", True),
    ("2024-02-29t00:00:00z", True),
    ("0000-01-01T00:00:00+00:00", True),
    ("1990-12-31T23:59:60Z", True),  # a leap second
    ("1990-12-31T15:59:60-08:00", True),  # the same second, in California
    ("1990-12-31T22:59:60Z", False),  # a leap second at the wrong hour
    ("2023-02-29T00:00:00Z", False),
    ("2100-02-29T00:00:00Z", False),
    ("2026-04-31T00:00:00Z", False),
    ("2026-13-01T00:00:00Z", False),
    ("2026-11-24T24:00:00Z", False),
    ("2026-11-24T01:60:00Z", False),
    ("2026-11-24T01:53:20+24:00", False),
    ("2026-11-24T01:53:20+01:60", False),
    ("2026-11-24T01:53:20", False),  # no offset
    ("2026-11-24 01:53:20Z", False),
    ("2026-11-24T01:53:20.Z", False),
    ("2026-11-24T01:53:20+0100", False),
    ("\uff12026-11-24T01:53:20Z", False),  # a full-width digit
    ("2026-11-24T01:53:20Z\n", False),
])
def test_date_time_is_rfc_3339(text, valid):
    assert (Schema({"format": "date-time"}).errors(text) == []) is valid


@pytest.mark.parametrize("text, valid", [
    ("00000000-0000-0000-0000-000000000000", True),
    ("01a20b41-ef23-7d4e-9d6b-85191069cb2a", True),
    ("01a20b41ef237d4e9d6b85191069cb2a", False),
    ("{01a20b41-ef23-7d4e-9d6b-85191069cb2a}", False),
    ("urn:uuid:01a20b41-ef23-7d4e-9d6b-85191069cb2a", False),
    ("01a20b41-ef23-7d4e-9d6b-85191069cb2a\n", False),
    ("01a20b41-ef23-7d4e-9d6b-85191069cb2", False),
])
def test_uuid_is_the_hyphenated_text_form(text, valid):
    assert (Schema({"format": "uuid"}).errors(text) == []) is valid


@given(st.datetimes(), st.integers(-23 * 60 - 59, 23 * 60 + 59))
def test_any_real_instant_with_any_offset_is_a_date_time(moment, offset_minutes):
    text = moment.replace(tzinfo=timezone(timedelta(minutes=offset_minutes))).isoformat()
    assert Schema({"format": "date-time"}).errors(text) == []
    assert Schema({"format": "date-time"}).errors(moment.isoformat()) != []  # no offset


@given(st.tuples(*(st.integers(0, 99) for _ in range(6))), st.integers(1, 9999))
def test_date_time_agrees_with_the_calendar(parts, year):
    month, day, hour, minute, second, _ = parts
    text = f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}Z"
    try:
        datetime(year, month, day, hour, minute, second)
        real = True
    except ValueError:
        real = second == 60 and (hour, minute) == (23, 59) and _calendar_day(year, month, day)  # a leap second
    assert (Schema({"format": "date-time"}).errors(text) == []) is real


def _calendar_day(year: int, month: int, day: int) -> bool:
    try:
        datetime(year, month, day)
        return True
    except ValueError:
        return False


@given(st.uuids())
def test_every_uuid_in_either_case_is_a_uuid_and_a_non_hex_digit_spoils_it(value):
    schema = Schema({"format": "uuid"})
    assert schema.errors(str(value)) == [] and schema.errors(str(value).upper()) == []
    assert schema.errors(str(value)[:-1] + "g") != []


@given(st.text(st.sampled_from(sorted(ECMA_WHITESPACE) + ["\x1c", "\x85", "a", "\u00e9", "."])))
def test_a_project_name_is_valid_when_it_holds_a_character_ecma_does_not_call_whitespace(name):
    problems = opik_schema("Trace_Write").errors({"start_time": "2026-11-24T01:53:20Z", "project_name": name})
    assert (problems == []) is any(char not in ECMA_WHITESPACE for char in name)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.sampled_from([0.0, 1.0, 2.5]) | st.text(max_size=2),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=2), inner, max_size=3),
    max_leaves=8)


def _json_equal(a: object, b: object) -> bool:
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None or isinstance(a, str):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)):
        return isinstance(b, (int, float)) and a == b
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(_json_equal, a, b))
    return isinstance(b, dict) and a.keys() == b.keys() and all(_json_equal(a[k], b[k]) for k in a)


@given(json_values, json_values)
def test_enum_and_unique_items_use_json_equality(a, b):
    assert (json_key(a) == json_key(b)) is _json_equal(a, b)
    assert (Schema({"uniqueItems": True}).errors([a, b]) == []) is not _json_equal(a, b)
    assert (Schema({"enum": [a]}).errors(b) == []) is _json_equal(a, b)


@pytest.fixture(scope="module")
def corpus_records(tmp_path_factory) -> list[tuple[str, str, dict]]:
    """(scenario, number, spool record) for everything the daemon ships for the recorded corpus."""
    return [(scenario, number, record)
            for scenario, number, _, result in materialized(tmp_path_factory.mktemp("sessions"))
            for record in result.records]


def test_todays_spool_records_are_valid_items_of_opiks_batch_requests(corpus_records):
    kinds = {"span": ("SpanBatch_Write", "spans"), "trace": ("TraceBatch_Write", "traces")}
    problems = []
    for scenario, number, record in corpus_records:
        schema, field = kinds[record["kind"]]
        problems += [(scenario, number, problem) for problem in opik_schema(schema).errors({field: [record["body"]]})]
    assert {record["kind"] for *_, record in corpus_records} == {"span", "trace"}
    assert problems == []
