"""References: the grammar of NAME, NAME:vN, NAME:ALIAS, NAME:draft (DESIGN.md §2)."""
from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import BadInput

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
VERSION_RE = re.compile(r"v(0|[1-9][0-9]{0,17})")
RESERVED_ALIASES = ("draft", "latest")


@dataclass(frozen=True)
class Ref:
    name: str
    version: int | None = None  # NAME:vN
    alias: str | None = None  # NAME:ALIAS (also "latest")
    draft: bool = False  # NAME:draft
    entity: str | None = None  # W&B's ENTITY/PROJECT/NAME:ALIAS: accepted, and recorded by runs
    project: str | None = None

    def __str__(self) -> str:
        if self.draft:
            return f"{self.name}:draft"
        if self.version is not None:
            return f"{self.name}:v{self.version}"
        return f"{self.name}:{self.alias}"


def check_artifact_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise BadInput(
            f"bad artifact name {name!r}: use letters, digits, '.', '_' or '-', starting with a letter or digit, at most 128"
        )
    return name


def check_alias(alias: str) -> str:
    if not isinstance(alias, str) or not NAME_RE.fullmatch(alias):
        raise BadInput(f"bad alias {alias!r}: use letters, digits, '.', '_' or '-', at most 128")
    if VERSION_RE.fullmatch(alias) or alias in RESERVED_ALIASES:
        raise BadInput(f"{alias!r} is reserved and cannot be an alias")
    if re.fullmatch(r"v[0-9]+", alias):
        raise BadInput(f"{alias!r} looks like a version number and cannot be an alias")
    return alias


def parse_ref(text: str) -> Ref:
    """Parse a reference (``[ENTITY/[PROJECT/]]NAME[:vN|:ALIAS|:draft]``); BadInput says what is wrong."""
    if not isinstance(text, str) or not text:
        raise BadInput("empty reference: expected NAME, NAME:vN, NAME:ALIAS or NAME:draft")
    if "/" in text:
        *scope, last = text.split("/")
        if len(scope) > 2 or not all(NAME_RE.fullmatch(p) for p in scope):
            raise BadInput(
                f"bad reference {text!r}: artifact names are letters, digits, '.', '_' or '-' (starting with a"
                " letter or digit), optionally after ENTITY/PROJECT/; expected NAME, NAME:vN, NAME:ALIAS or NAME:draft")
        r = parse_ref(last)
        entity, project = (scope + [None, None])[:2] if len(scope) == 2 else (None, scope[0])
        return Ref(r.name, r.version, r.alias, r.draft, entity, project)
    if text.count(":") > 1:
        raise BadInput(f"bad reference {text!r}: expected NAME, NAME:vN, NAME:ALIAS or NAME:draft")
    name, sep, tail = text.partition(":")
    if not NAME_RE.fullmatch(name):
        raise BadInput(
            f"bad reference {text!r}: artifact names are letters, digits, '.', '_' or '-' "
            "(starting with a letter or digit); expected NAME, NAME:vN, NAME:ALIAS or NAME:draft"
        )
    if not sep:
        return Ref(name, alias="latest")
    if not tail:
        raise BadInput(f"bad reference {text!r}: nothing after ':' (expected vN, an alias or draft)")
    if tail == "draft":
        return Ref(name, draft=True)
    if VERSION_RE.fullmatch(tail):
        return Ref(name, version=int(tail[1:]))
    if re.fullmatch(r"v[0-9]+", tail):
        why = "version numbers have no leading zeros" if tail.startswith("v0") else "version number too large"
        raise BadInput(f"bad reference {text!r}: {why}")
    if not NAME_RE.fullmatch(tail):
        raise BadInput(f"bad reference {text!r}: {tail!r} is neither vN, an alias nor draft")
    return Ref(name, alias=tail)
