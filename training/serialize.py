"""The one serializer of the stage configs: frozen dataclass <-> CLI args <-> hyperparameters.

Every stage config (``TrainConfig``, ``PrepareConfig``, ``PipelineConfig``) crosses a process
boundary as strings: ``--field value`` arguments of an entry point, or SageMaker
hyperparameters (a ``{name: str}`` map that SageMaker's drivers turn into ``--name value`` and
``SM_HPS``). Parsing and type checking are jsonargparse's (the parser Lightning's own CLI is
built on): ints, floats, ``true``/``false``, ``null`` for ``None``, ``Literal`` choices and JSON
lists for tuples. This module only adds what all configs share:

- ``--field-name`` and ``--field_name`` are the same flag; a field may declare more spellings
  (``aliases``) and a parser for a shorthand (``shorthand``: ``--image-size 64``) in its
  metadata (:func:`option`);
- a typo is an error naming the known fields; keys with an ignored prefix (SageMaker's own
  ``sagemaker_*``) are dropped;
- flags not given keep the values of a base config, so named setups compose.

``from_args(cls, to_args(cfg)) == cfg`` and ``from_hyperparameters(cls,
to_hyperparameters(cfg)) == cfg`` hold for every config (tested per config).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import re
import typing
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any, TypeVar, cast

C = TypeVar("C")
IGNORED_PREFIXES = ("sagemaker_",)  # keys SageMaker's SDK and drivers add to hyperparameters
_KEY = re.compile(r'[Pp]arser key "([^"]+)"')


def option(
    default: Any = dataclasses.MISSING,
    *,
    help: str = "",
    aliases: Sequence[str] = (),
    shorthand: Callable[[str], Any] | None = None,
    **metadata: Any,
) -> Any:
    """A dataclass field with CLI metadata: help text, extra flag spellings, a shorthand parser.

    ``shorthand(text)`` turns a raw command-line value that is not JSON into the field's value
    (e.g. ``"64"`` -> ``(64, 64)``); canonical JSON (what :func:`to_args` writes) always parses.
    """
    meta = {"help": help, "aliases": tuple(aliases), "shorthand": shorthand, **metadata}
    return dataclasses.field(default=default, metadata=meta)


def size_shorthand(text: str) -> tuple[int, int]:
    """An image size on a command line: `64` -> (64, 64); `28,32` or `28x32` -> (28, 32)."""
    parts = text.lower().replace("x", ",").split(",")
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2:
        raise ValueError(f"expected H,W or HxW or N, got {text!r}")
    return int(parts[0]), int(parts[1])


def _fields(cls: type) -> tuple[dataclasses.Field[Any], ...]:
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    return dataclasses.fields(cls)


@functools.cache
def _parser(cls: Any) -> Any:
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(prog=cls.__name__, exit_on_error=False, default_env=False)
    parser.add_class_arguments(cls, nested_key=None, as_group=False, fail_untyped=True)
    return parser


@functools.cache
def _spellings(cls: type) -> dict[str, str]:
    """Every accepted flag spelling (without ``--``) -> field name."""
    names: dict[str, str] = {}
    for f in _fields(cls):
        for spelling in (f.name, f.name.replace("_", "-"), *f.metadata.get("aliases", ())):
            names[spelling.removeprefix("--")] = f.name
    return names


def _format(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return json.dumps(value)  # true / false / null
    if isinstance(value, float):
        return repr(value)  # shortest round-tripping form
    if isinstance(value, tuple | list):
        return json.dumps(list(value), ensure_ascii=False)
    return str(value)


def to_hyperparameters(cfg: Any) -> dict[str, str]:
    """Every field as ``{field_name: str}`` (SageMaker hyperparameters are strings)."""
    return {f.name: _format(getattr(cfg, f.name)) for f in _fields(type(cfg))}


def to_args(cfg: Any, dashes: bool = False) -> list[str]:
    """Every field as ``--field_name value`` (``--field-name`` with ``dashes``)."""
    args: list[str] = []
    for name, value in to_hyperparameters(cfg).items():
        args += ["--" + (name.replace("_", "-") if dashes else name), value]
    return args


def _tokens(cls: type, argv: Sequence[str]) -> list[tuple[str, str]]:
    """``--flag value``, ``--flag=value``, and for booleans ``--flag`` / ``--no-flag``, as
    (flag without dashes, raw value) in order."""
    spellings, bools = _spellings(cls), _bool_fields(cls)
    pairs: list[tuple[str, str]] = []
    tokens = list(argv)
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--") or token == "--":
            raise ValueError(f"expected --NAME VALUE arguments, got {token!r} in {list(argv)}")
        flag, sep, value = token[2:].partition("=")
        negated = flag.startswith("no-") or flag.startswith("no_")
        if not sep and negated and spellings.get(flag[3:]) in bools:
            pairs.append((flag[3:], "false"))
        elif (
            not sep
            and spellings.get(flag) in bools
            and (i + 1 >= len(tokens) or tokens[i + 1].startswith("--"))
        ):
            pairs.append((flag, "true"))
        elif not sep:
            if i + 1 >= len(tokens):
                raise ValueError(f"--{flag} needs a value")
            pairs.append((flag, tokens[i + 1]))
            i += 1
        else:
            pairs.append((flag, value))
        i += 1
    return pairs


@functools.cache
def _bool_fields(cls: type) -> frozenset[str]:
    hints = typing.get_type_hints(cls)
    return frozenset(f.name for f in _fields(cls) if hints[f.name] is bool)


def from_hyperparameters(
    cls: type[C],
    values: Mapping[str, Any],
    base: C | None = None,
    ignore_prefixes: Iterable[str] = IGNORED_PREFIXES,
) -> C:
    """Apply ``{name: value}`` (field name in any accepted spelling) onto ``base``.

    Values are strings as on the command line, or already typed values (SM_HPS may hold
    numbers). Unknown names raise ValueError; ``ignore_prefixes`` names are dropped.
    """
    return _apply(cls, _collect(cls, list(values.items()), tuple(ignore_prefixes)), base)


def from_args(
    cls: type[C],
    argv: Sequence[str],
    base: C | None = None,
    ignore_prefixes: Iterable[str] = IGNORED_PREFIXES,
) -> C:
    """Parse ``--name value`` arguments (as :func:`to_args` writes them) onto ``base``."""
    return _apply(cls, _collect(cls, _tokens(cls, argv), tuple(ignore_prefixes)), base)


def _collect(cls: type, items: list[tuple[Any, Any]], prefixes: tuple[str, ...]) -> dict[str, Any]:
    """Field name -> value: spellings resolved, ignored keys dropped, ``repeat`` fields
    gathered (each occurrence one item), unknown names refused."""
    spellings = _spellings(cls)
    by_name = {f.name: f for f in _fields(cls)}
    changes: dict[str, Any] = {}
    unknown: list[str] = []
    for key, value in items:
        key = str(key).removeprefix("--")
        if prefixes and key.startswith(prefixes):
            continue
        name = spellings.get(key)
        if name is None:
            unknown.append(key)
            continue
        meta = by_name[name].metadata
        if meta.get("repeat") and isinstance(value, str) and not value.lstrip().startswith("["):
            item = meta["shorthand"](value) if meta.get("shorthand") else value
            changes[name] = [*changes.get(name, []), item]
        else:
            changes[name] = value
    if unknown:
        known = ", ".join(f.name for f in _fields(cls))
        raise ValueError(
            f"unknown hyperparameters {sorted(unknown)} (no such {cls.__name__} field); "
            f"known: {known}"
        )
    return changes


def _apply(cls: type[C], changes: Mapping[str, Any], base: C | None) -> C:
    from jsonargparse import ArgumentError

    by_name = {f.name: f for f in _fields(cls)}
    argv: list[str] = []
    for name, value in changes.items():
        raw = value if isinstance(value, str) else _format(value)
        shorthand = by_name[name].metadata.get("shorthand")
        if shorthand is not None and isinstance(value, str) and not raw.lstrip().startswith("["):
            try:
                raw = _format(shorthand(raw))
            except (ValueError, TypeError) as exc:
                raise ValueError(f"{name}={value!r}: {exc}") from None
        argv += [f"--{name}", raw]
    parser = _parser(cast(Hashable, cls))
    try:
        if base is None:
            parsed = parser.parse_args(argv)
        else:
            current = {f.name: getattr(base, f.name) for f in _fields(cls)}
            parsed = _parse_with_defaults(parser, argv, current)
    except ArgumentError as exc:
        raise ValueError(_explain(cls, str(exc), changes)) from None
    hints = typing.get_type_hints(cls)
    values = {f.name: _coerce(hints[f.name], getattr(parsed, f.name)) for f in _fields(cls)}
    return cls(**values)


def _parse_with_defaults(parser: Any, argv: list[str], defaults: dict[str, Any]) -> Any:
    """Parse with ``defaults`` in place of the class defaults (the parser is shared: restore)."""
    saved = {name: parser.get_default(name) for name in defaults}
    parser.set_defaults(**defaults)
    try:
        return parser.parse_args(argv)
    finally:
        parser.set_defaults(**saved)


def _coerce(hint: Any, value: Any) -> Any:
    """Lists where the type says tuple (jsonargparse may hand back lists), recursively."""
    if typing.get_origin(hint) is not tuple or not isinstance(value, list | tuple):
        return value
    args = typing.get_args(hint)
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(_coerce(args[0], v) for v in value)
    return tuple(_coerce(a, v) for a, v in zip(args, value, strict=False))


def _explain(cls: type, message: str, changes: Mapping[str, Any]) -> str:
    """jsonargparse's message, led by the field and value that failed and the expected type."""
    match = _KEY.search(message)
    if match and match.group(1) in changes:
        name = match.group(1)
        expected = _type_name(typing.get_type_hints(cls)[name])
        return f"{name}={changes[name]!r}: expected {expected} ({' '.join(message.split())})"
    return f"{cls.__name__}: {' '.join(message.split())}"


def describe(cls: type) -> str:
    """One line per field: flag, type, default and help (for a command's --help)."""
    hints = typing.get_type_hints(cls)
    lines = []
    for f in _fields(cls):
        kind = _type_name(hints[f.name])
        default = "" if f.default is dataclasses.MISSING else f" = {_format(f.default)}"
        text = f.metadata.get("help") or _comments(cls).get(f.name, "")
        lines.append(
            f"  --{f.name.replace('_', '-')} ({kind}{default}){'  ' + text if text else ''}"
        )
    return "\n".join(lines)


@functools.cache
def _comments(cls: type) -> dict[str, str]:
    """Field name -> the comment on its line in the class body (``x: int = 3  # pixels``):
    the fields' documentation, read from the source rather than written twice."""
    import inspect
    import io
    import tokenize

    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    names = {f.name for f in _fields(cls)}
    found: dict[str, str] = {}
    line_start: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.NAME and tok.start[0] not in line_start:
            line_start[tok.start[0]] = tok.string
        if tok.type == tokenize.COMMENT and line_start.get(tok.start[0]) in names:
            found.setdefault(line_start[tok.start[0]], tok.string.lstrip("# ").strip())
    return found


def _type_name(hint: Any) -> str:
    if isinstance(hint, type) and not typing.get_args(hint):
        return hint.__name__
    return str(hint).replace("typing.", "")


def add_config_options(parser: Any, cls: type, skip: Iterable[str] = ()) -> None:
    """One argparse option per field of ``cls`` (both spellings, aliases, ``--no-X`` for
    booleans), keeping the raw strings: :func:`config_from_namespace` parses them here, so a
    command's --help lists every field and argparse knows which flags take a value."""
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(f"{cls.__name__} fields")
    skipped = set(skip)
    for f in _fields(cls):
        if f.name in skipped:
            continue
        names = list(dict.fromkeys([f"--{f.name.replace('_', '-')}", f"--{f.name}"]))
        names += [f"--{a}" for a in f.metadata.get("aliases", ())]
        default = "" if f.default is dataclasses.MISSING else f" (default {_format(f.default)})"
        text = (f.metadata.get("help") or _comments(cls).get(f.name, "")) + default
        dest = f"config_{f.name}"
        if hints[f.name] is bool:
            group.add_argument(
                *names, dest=dest, nargs="?", const="true", default=None, metavar="BOOL", help=text
            )
            group.add_argument(
                f"--no-{f.name.replace('_', '-')}",
                dest=dest,
                action="store_const",
                const="false",
                help=argparse.SUPPRESS,
            )
        elif f.metadata.get("repeat"):
            group.add_argument(*names, dest=dest, action="append", default=None, help=text)
        else:
            group.add_argument(*names, dest=dest, default=None, metavar="V", help=text)


def config_from_namespace(
    cls: type[C],
    namespace: Any,
    base: C | None = None,
    given: Mapping[str, Any] | None = None,
) -> C:
    """The config of the options :func:`add_config_options` added (and of ``given`` values,
    e.g. positional arguments), over ``base``."""
    items: list[tuple[str, Any]] = list((given or {}).items())
    for f in _fields(cls):
        value = getattr(namespace, f"config_{f.name}", None)
        if value is None:
            continue
        if isinstance(value, list):
            items += [(f.name, v) for v in value]
        else:
            items.append((f.name, value))
    return _apply(cls, _collect(cls, items, ()), base)
