"""Flags generated from config dataclasses, and the options every command shares.

A command's settings are dataclasses whose fields carry their help text in metadata
(:func:`option`). :func:`build_parser` makes one flag per field (``--field-name``), so a
setting without a flag cannot exist, and prints each default once: the field's value, or the
field's ``default_help`` where the effective default depends on other settings. Every flag
parses to None when it is not given, so :func:`given` returns only what the user typed and a
config file's values are never overridden by a default.

Field types map to flags: ``bool`` -> ``--x / --no-x``; ``int``, ``float``, ``str``,
``Path`` -> one value; ``dict`` -> a JSON object; ``tuple`` / ``list`` -> ``nargs`` values
or a ``parse`` function; ``X | None`` -> as ``X``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from mil_cyto.errors import MilCytoError

T = TypeVar("T")
MISSING: Any = dataclasses.MISSING


def option(
    default: Any = MISSING,
    *,
    help: str,
    default_help: str | None = None,
    default_factory: Any = MISSING,
    choices: Sequence[str] | None = None,
    parse: Callable[[str], Any] | None = None,
    metavar: str | None = None,
    nargs: str | None = None,
    flag: str | None = None,
    aliases: Mapping[str, Any] | None = None,
) -> Any:
    """A dataclass field whose flag's help lives in its ``metadata``.

    ``default_help``: how the default reads in ``--help`` when it is not the field's value
    (e.g. ``"48 in frozen mode, 16 when fine-tuning"`` for a None resolved later);
    ``parse``: text -> value for types a flag cannot infer (``"20,40"`` -> ``(20, 40)``);
    ``flag``: the flag when it is not ``--field-name``; ``aliases``: more flags, each storing
    a constant (``{"--no-progress": True}``). No field default and no factory: a required flag.
    """
    if "(default" in help:
        raise ValueError(f"help {help!r}: the default is printed for you; use default_help")
    metadata = {
        "help": help,
        "default_help": default_help,
        "choices": tuple(choices) if choices is not None else None,
        "parse": parse,
        "metavar": metavar,
        "nargs": nargs,
        "flag": flag,
        "aliases": dict(aliases or {}),
    }
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


# --- the options every command shares: one definition each --------------------------------


def device_option(default: str = "auto") -> Any:
    """``--device``: where models run."""
    return option(default, help="auto, cpu or cuda (auto: CUDA when present)")


def workers_option(
    help: str = "threads decoding photos",
    *,
    default: int = 2,
    default_factory: Callable[[], int] | Any = MISSING,
    default_help: str | None = None,
) -> Any:
    """``--workers``: parallel photo decoding (threads unless the command says processes)."""
    if default_factory is not MISSING:
        return option(help=help, default_factory=default_factory, default_help=default_help)
    return option(default, help=help, default_help=default_help)


def threads_option() -> Any:
    """``--threads``: torch's CPU threads (see :func:`set_threads`)."""
    return option(0, help="torch CPU threads (0 = torch's default)")


def seed_option(help: str) -> Any:
    """``--seed``: the command's seed (``help`` says what it seeds)."""
    return option(0, help=help)


def out_option(help: str, *, default_help: str | None = None, required: bool = False) -> Any:
    """``--out``: where the command writes (required, or None = ``default_help``)."""
    return option(MISSING if required else None, help=help, default_help=default_help)


def data_option() -> Any:
    """``--data``: the folder with manifest.csv (None = the built-in synthetic set)."""
    return option(None, help="folder with manifest.csv", default_help="the built-in synthetic set")


def label_column_option() -> Any:
    """``--label-column``: the manifest's grade column to learn."""
    return option(
        None,
        help="grade column to learn: histology, cytology or label",
        default_help="the first of histology, cytology, label that the manifest has",
    )


def cells_option() -> Any:
    """``--cells``: cell annotations for localization (None = DATA/cells.csv)."""
    return option(None, help="cell annotations CSV for localization", default_help="DATA/cells.csv")


def quiet_option() -> Any:
    """``--quiet`` (alias ``--no-progress``): no progress bars."""
    return option(False, help="no progress bars", aliases={"--no-progress": True})


@dataclasses.dataclass
class Console:
    """What every command's output shares, beside its settings."""

    quiet: bool = quiet_option()


def set_threads(threads: int) -> None:
    """Set torch's CPU threads; 0 keeps torch's default."""
    if threads > 0:
        import torch

        torch.set_num_threads(threads)


def exit_code(call: Callable[[], int | None]) -> int:
    """Run a command's body: 0 when it returns, 2 with ``error: ...`` on a user error."""
    try:
        return call() or 0
    except MilCytoError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


# --- the generator -------------------------------------------------------------------------


def json_object(text: str) -> dict[str, Any]:
    """A flag's JSON object (``'{"width": 8}'``); anything else is a usage error."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(
            f"not valid JSON ({err}); give a JSON object such as '{{\"width\": 8}}'"
        ) from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a JSON object; give one such as '{{\"width\": 8}}'"
        )
    return value


def _unwrap(annotation: Any) -> Any:
    """The type without its ``| None``."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"no flag type for {annotation!r}: use one type or one | None")
        return args[0]
    return annotation


def _is_tuple(annotation: Any) -> bool:
    return typing.get_origin(_unwrap(annotation)) is tuple


def _value_kwargs(name: str, kind: Any, meta: Mapping[str, Any]) -> dict[str, Any]:
    """argparse's ``type`` / ``action`` / ``nargs`` for a field of type ``kind``."""
    if meta["parse"] is not None:
        return {"type": meta["parse"]}
    if kind is bool:
        return {"action": argparse.BooleanOptionalAction}
    origin = typing.get_origin(kind)
    if kind is dict or origin is dict:
        return {"type": json_object, "metavar": "JSON"}
    if origin in (tuple, list):
        elements = {a for a in typing.get_args(kind) if a is not Ellipsis}
        if meta["nargs"] is None or len(elements) != 1:
            raise TypeError(f"field {name} ({kind!r}) needs nargs= (one element type) or parse=")
        return {"type": elements.pop(), "nargs": meta["nargs"]}
    if kind in (int, float, str, Path):
        return {"type": kind}
    raise TypeError(f"field {name}: no flag type for {kind!r}; give parse=")


def field_default(f: dataclasses.Field[Any]) -> Any:
    """A field's default value (its factory called), or MISSING for a required field."""
    if f.default is not MISSING:
        return f.default
    if callable(f.default_factory):
        return f.default_factory()
    return MISSING


def default_text(f: dataclasses.Field[Any]) -> str | None:
    """How the field's default reads in ``--help`` (None: not printed)."""
    meta = f.metadata
    if meta.get("default_help") is not None:
        return str(meta["default_help"])
    value = field_default(f)
    if value is MISSING or value is None:
        return None
    if value == "":
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple | list):
        return (" " if meta.get("nargs") else ",").join(str(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)


def flag_of(f: dataclasses.Field[Any]) -> str:
    """The flag of a field: ``--field-name`` unless its metadata names another."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def add_options(parser: argparse.ArgumentParser, config_type: type) -> None:
    """One flag per field of the dataclass ``config_type`` (each parses to None when absent)."""
    hints = typing.get_type_hints(config_type)
    taken = {a.dest for a in parser._actions}
    for f in dataclasses.fields(config_type):
        if not f.init:
            continue
        if "help" not in f.metadata:
            raise TypeError(
                f"{config_type.__name__}.{f.name} has no flag: declare it with "
                "mil_cyto.cli.options.option(..., help=...)"
            )
        if f.name in taken:
            raise TypeError(f"{config_type.__name__}.{f.name}: another config has this field")
        meta = f.metadata
        help_text = meta["help"]
        shown = default_text(f)
        if shown is not None:
            help_text = f"{help_text} (default: {shown})"
        kwargs: dict[str, Any] = {"dest": f.name, "default": None}
        kwargs.update(_value_kwargs(f.name, _unwrap(hints[f.name]), meta))
        kwargs["help"] = help_text.replace("%", "%%")
        if meta["choices"] is not None:
            kwargs["choices"] = meta["choices"]
        if meta["metavar"] is not None:
            kwargs["metavar"] = meta["metavar"]
        if field_default(f) is MISSING:
            kwargs["required"] = True
        flag = flag_of(f)
        parser.add_argument(flag, **kwargs)
        for alias, const in meta["aliases"].items():
            parser.add_argument(
                alias, dest=f.name, action="store_const", const=const, help=f"the same as {flag}"
            )


def build_parser(
    prog: str, description: str, *config_types: type, console: bool = True
) -> argparse.ArgumentParser:
    """A command's parser: the flags of each dataclass in ``config_types`` (and of
    :class:`Console` unless ``console`` is False)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    for config_type in (*config_types, *((Console,) if console else ())):
        add_options(parser, config_type)
    return parser


def given(config_type: type, args: argparse.Namespace) -> dict[str, Any]:
    """The fields of ``config_type`` that were given on the command line."""
    hints = typing.get_type_hints(config_type)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(config_type):
        value = getattr(args, f.name, None)
        if value is not None:
            values[f.name] = tuple(value) if _is_tuple(hints[f.name]) else value
    return values


def from_args(
    config_type: type[T], args: argparse.Namespace, base: Mapping[str, Any] | None = None
) -> T:
    """``config_type`` from its defaults, overridden by ``base``, overridden by the flags."""
    return config_type(**{**(base or {}), **given(config_type, args)})
