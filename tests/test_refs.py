"""The reference and alias grammar (DESIGN.md §1, §2)."""
from __future__ import annotations

import pytest

from artfs.errors import BadInput
from artfs.refs import Ref, check_alias, check_artifact_name, parse_ref


@pytest.mark.parametrize("text, ref", [
    ("mnist", Ref("mnist", alias="latest")),
    ("mnist:latest", Ref("mnist", alias="latest")),
    ("mnist:v0", Ref("mnist", version=0)),
    ("mnist:v12", Ref("mnist", version=12)),
    ("mnist:draft", Ref("mnist", draft=True)),
    ("mnist:production", Ref("mnist", alias="production")),
    ("mnist:best-2.1_a", Ref("mnist", alias="best-2.1_a")),
    ("mnist:V1", Ref("mnist", alias="V1")),  # versions are lowercase v; V1 is an ordinary alias
    ("mnist:vx", Ref("mnist", alias="vx")),
    ("mnist:v1.0", Ref("mnist", alias="v1.0")),  # not v<digits>: the alias grammar allows it
    ("mnist:v-1", Ref("mnist", alias="v-1")),
    ("mnist:Draft", Ref("mnist", alias="Draft")),
    ("0", Ref("0", alias="latest")),
    ("v01", Ref("v01", alias="latest")),  # a name may look like anything the grammar allows
    ("a.b-c_D9", Ref("a.b-c_D9", alias="latest")),
    ("x" * 128, Ref("x" * 128, alias="latest")),
    ("m:v" + "9" * 18, Ref("m", version=int("9" * 18))),
])
def test_parse_ref_good(text, ref):
    r = parse_ref(text)
    assert r == ref
    # str() gives the canonical spelling, which parses back to the same thing
    assert parse_ref(str(r)) == r


@pytest.mark.parametrize("text", [
    "", "mnist:", ":v1", ":", "bad name", "../x", "./x", "x//y", "/y", "x/", "a/b/c/d", "x y/z", "a:b:c", "mnist:v01", "mnist:v00",
    "mnist:v" + "9" * 19, ".hidden", "-x", "_x", "x" * 129, "mnist:" + "a" * 129, "mnist:a b",
    "mnist:/x", "mnist::v1", " mnist", "mnist ", "mnist\n", "mnïst", "mnist:vé", "mnist:v1\n", "m\0",
    "mnist:.x",
])
def test_parse_ref_bad(text):
    with pytest.raises(BadInput) as ei:
        parse_ref(text)
    msg = str(ei.value)
    assert "\n" not in msg.strip() or "\n" in text  # one line (the text itself may carry a newline, repr'd)
    assert msg


def test_parse_ref_bad_messages_say_what_is_wrong():
    with pytest.raises(BadInput, match="nothing after ':'"):
        parse_ref("mnist:")
    with pytest.raises(BadInput, match="leading zeros"):
        parse_ref("mnist:v01")
    with pytest.raises(BadInput, match="too large"):
        parse_ref("mnist:v" + "9" * 19)
    with pytest.raises(BadInput, match="NAME:vN"):
        parse_ref("a:b:c")


def test_parse_ref_rejects_non_strings():
    for bad in (None, 1, b"mnist"):
        with pytest.raises(BadInput):
            parse_ref(bad)


@pytest.mark.parametrize("name", ["mnist", "M", "0abc", "a.b", "a-b", "a_b", "x" * 128])
def test_artifact_name_good(name):
    assert check_artifact_name(name) == name


@pytest.mark.parametrize("name", ["", ".x", "-x", "a b", "a/b", "a:b", "x" * 129, "é", None, b"x", "a\n"])
def test_artifact_name_bad(name):
    with pytest.raises(BadInput):
        check_artifact_name(name)


@pytest.mark.parametrize("alias", ["production", "best", "v", "vx", "v1a", "V1", "Latest", "drafts", "prod-2.0", "x" * 128])
def test_alias_good(alias):
    assert check_alias(alias) == alias


@pytest.mark.parametrize("alias", [
    "v0", "v1", "v10", "v01", "v007", "v" + "1" * 30, "draft", "latest", "", "a b", "a:b", ".x", "x" * 129, None,
])
def test_alias_bad(alias):
    with pytest.raises(BadInput):
        check_alias(alias)
