"""A small IAM policy evaluator: enough of IAM's logic to ask what a policy allows.

`evaluate(docs, action, resource, context)` returns "allow", "deny" (an explicit Deny matched)
or "implicit-deny" (nothing allowed it), with IAM's precedence: an explicit Deny beats any
Allow. Supports Action/NotAction, Resource/NotResource, Principal, `*` and `?` wildcards
(actions case-insensitive, resources case-sensitive) and the condition operators the template
uses; an operator it does not know raises, so a check never passes by ignorance.
It is a test oracle, not a replacement for IAM's policy simulator.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any

Decision = str  # "allow" | "deny" | "implicit-deny"


@lru_cache(maxsize=4096)
def _wildcard(pattern: str, ignore_case: bool = False) -> re.Pattern[str]:
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile(regex, re.IGNORECASE if ignore_case else 0)


_POSITIVE = {
    "StringEquals": lambda pattern, value: pattern == value,
    "StringEqualsIgnoreCase": lambda pattern, value: pattern.lower() == value.lower(),
    "StringLike": lambda pattern, value: _wildcard(pattern).fullmatch(value) is not None,
    "ArnEquals": lambda pattern, value: pattern == value,
    "ArnLike": lambda pattern, value: _wildcard(pattern).fullmatch(value) is not None,
    "Bool": lambda pattern, value: pattern.lower() == value.lower(),
}
_NEGATIVE = {
    "StringNotEquals": "StringEquals",
    "StringNotLike": "StringLike",
    "ArnNotEquals": "ArnEquals",
    "ArnNotLike": "ArnLike",
}


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def statements(docs: Mapping[str, Any] | Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """All statements of one policy document or of several."""
    out: list[Mapping[str, Any]] = []
    for doc in [docs] if isinstance(docs, Mapping) else docs:
        out += _as_list(doc.get("Statement"))
    return out


def matches_action(statement: Mapping[str, Any], action: str) -> bool:
    if "NotAction" in statement:
        return not any(
            _wildcard(p, True).fullmatch(action) for p in _as_list(statement["NotAction"])
        )
    return any(_wildcard(p, True).fullmatch(action) for p in _as_list(statement.get("Action")))


def matches_resource(statement: Mapping[str, Any], resource: str) -> bool:
    if "NotResource" in statement:
        return not any(_wildcard(p).fullmatch(resource) for p in _as_list(statement["NotResource"]))
    if "Resource" not in statement:  # trust policies have no Resource
        return True
    return any(_wildcard(p).fullmatch(resource) for p in _as_list(statement["Resource"]))


def matches_principal(statement: Mapping[str, Any], principal: Mapping[str, str] | None) -> bool:
    """`principal` like {"AWS": arn} / {"Service": name} / {"Federated": arn}; None = not checked."""
    wanted = statement.get("Principal")
    if principal is None or wanted is None or wanted == "*":
        return True
    for kind, value in principal.items():
        if any(p == "*" or p == value for p in _as_list(wanted.get(kind))):
            return True
    return False


def matches_condition(statement: Mapping[str, Any], context: Mapping[str, str]) -> bool:
    for operator, block in (statement.get("Condition") or {}).items():
        if_exists = operator.endswith("IfExists")
        base = operator.removesuffix("IfExists")
        negate = base in _NEGATIVE
        test = _POSITIVE.get(_NEGATIVE.get(base, base))
        if test is None:
            raise ValueError(f"condition operator {operator!r} is not supported by this evaluator")
        for key, patterns in block.items():
            value = context.get(key)
            if value is None:
                # IAM: a missing key fails a positive test and satisfies a negated one.
                if not (if_exists or negate):
                    return False
                continue
            hit = any(test(str(p), str(value)) for p in _as_list(patterns))
            if hit == negate:
                return False
    return True


def evaluate(
    docs: Mapping[str, Any] | Iterable[Mapping[str, Any]],
    action: str,
    resource: str,
    context: Mapping[str, str] | None = None,
    principal: Mapping[str, str] | None = None,
) -> Decision:
    """IAM's decision for one request against one or more policy documents."""
    allowed = False
    for st in statements(docs):
        if not (
            matches_action(st, action)
            and matches_resource(st, resource)
            and matches_principal(st, principal)
            and matches_condition(st, context or {})
        ):
            continue
        if st.get("Effect") == "Deny":
            return "deny"
        allowed = allowed or st.get("Effect") == "Allow"
    return "allow" if allowed else "implicit-deny"


def allowing_statements(
    docs: Mapping[str, Any] | Iterable[Mapping[str, Any]], action_glob: str
) -> list[Mapping[str, Any]]:
    """Allow statements that grant at least one action matching `action_glob` (e.g. "s3:*")."""
    pattern = _wildcard(action_glob, True)
    found = []
    for st in statements(docs):
        if st.get("Effect") != "Allow":
            continue
        actions = _as_list(st.get("Action"))
        if "NotAction" in st or any(
            pattern.fullmatch(a) or _wildcard(a, True).fullmatch(action_glob) for a in actions
        ):
            found.append(st)
    return found
