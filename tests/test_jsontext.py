"""captionkit.jsontext.parse_json: every way hostile JSON can fail is one InputError naming the source."""

from __future__ import annotations

import pytest

from captionkit.errors import ConfigError, InputError
from captionkit.jsontext import MAX_DEPTH, parse_json

TOO_DEEP = f"invalid JSON: nested more than {MAX_DEPTH} levels deep"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("[" * 1500 + "]" * 1500, TOO_DEEP),
        ("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), TOO_DEEP),
        ('{"a": ' * (MAX_DEPTH + 1) + "1" + "}" * (MAX_DEPTH + 1), TOO_DEEP),
        ('[[], {"k": 1}, ' + '{"k": [' * (MAX_DEPTH // 2) + "]}" * (MAX_DEPTH // 2) + "]", TOO_DEEP),  # 65, mixed
        ("[" + "7" * 5000 + "]", "invalid JSON: a number longer than 4300 digits"),
        ('{"x": NaN}', "invalid JSON: NaN is not a JSON number"),
        ("[Infinity]", "invalid JSON: Infinity is not a JSON number"),
        ("[-Infinity]", "invalid JSON: -Infinity is not a JSON number"),
        ("[1e999]", "invalid JSON: the number 1e999 is out of range"),
        ("[1" + "0" * 400 + ".5]", "invalid JSON: the number 10000000000000000000... is out of range"),
        ('{"a": 1,', "invalid JSON: Expecting property name enclosed in double quotes (column 9)"),
        ('{\n"a": }', "invalid JSON: Expecting value (line 2, column 6)"),
    ],
)
def test_hostile_json_is_one_input_error(text: str, reason: str) -> None:
    with pytest.raises(InputError) as caught:
        parse_json(text, "f.json")
    assert caught.value.source == "f.json"
    assert caught.value.reason.startswith(reason)
    assert "\n" not in str(caught.value)


def test_limits_keep_what_real_files_hold() -> None:
    deepest = "[" * MAX_DEPTH + "]" * MAX_DEPTH
    nested: list = []
    for _ in range(MAX_DEPTH - 1):
        nested = [nested]
    assert parse_json(deepest, "f.json") == nested
    mixed = '[[], {"k": 1}, ' + '{"k": [' * (MAX_DEPTH // 2 - 1) + '{"k": 1}' + "]}" * (MAX_DEPTH // 2 - 1) + "]"
    inner: dict = {"k": 1}
    for _ in range(MAX_DEPTH // 2 - 1):
        inner = {"k": [inner]}
    assert parse_json(mixed, "f.json") == [[], {"k": 1}, inner]  # 64 levels: the list, 31 x (object, list), object
    assert parse_json("[" + "7" * 4300 + ", 1.5e300, -0.0]", "f.json") == [int("7" * 4300), 1.5e300, -0.0]
    assert parse_json('{"a": 1, "a": 2}', "f.json") == {"a": 2}


def test_duplicate_keys_only_when_asked_and_error_type() -> None:
    with pytest.raises(InputError, match=r"^f.json: invalid JSON: duplicate key 'k'$"):
        parse_json('{"x": {"k": 1, "k": 2}}', "f.json", unique_keys=True)
    with pytest.raises(ConfigError, match="nested more than"):
        parse_json("[" * 2000 + "]" * 2000, "config.json", error=ConfigError)


def test_non_finite_numbers_only_for_files_captionkit_wrote() -> None:
    document = parse_json('{"loss": NaN, "best": -Infinity, "big": 1e999}', "trainer_state.json", non_finite=True)
    assert document["best"] == document["big"] * -1 == float("-inf") and document["loss"] != document["loss"]
    with pytest.raises(InputError, match=r"^trainer_state.json: invalid JSON: nested more than 64 levels deep$"):
        parse_json("[" * 1500 + "]" * 1500, "trainer_state.json", non_finite=True)
