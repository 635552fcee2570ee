"""Write the API pages (docs/api/) from the docstrings of the importable modules.

Usage, from the repository root::

    python docs/make_api.py            # (re)write docs/api/index.md and one page per module
    python docs/make_api.py --check    # exit 1 if the pages are not what the code says

One page per public module of ``mil_cyto`` and ``explain`` (modules and packages whose
name has no part starting with ``_``; ``__main__`` is left out). A page holds the module's
docstring, then every public class, function, registry and dataclass *defined* in that module
(re-exports are listed on the package's page as links), each with its signature and the
first paragraph of its docstring. Dataclasses get a table of their fields (type, default and,
where the field declares one, ``metadata["help"]``). The output depends only on the code:
modules and members in a fixed order, object addresses removed from default values, so two
runs on the same tree write the same bytes. Pages of modules that no longer exist are
removed.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import pkgutil
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

PACKAGES = ("mil_cyto", "explain")
ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "api"
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
_ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|obj):`~?([^`]+)`")
_WIDTH = 96


def module_names(packages: tuple[str, ...] = PACKAGES) -> list[str]:
    """Every public module and package under ``packages``, sorted by dotted name."""
    names: set[str] = set()
    for package in packages:
        root = importlib.import_module(package)
        names.add(package)
        for info in pkgutil.walk_packages(root.__path__, prefix=f"{package}."):
            parts = info.name.split(".")
            if any(part.startswith("_") for part in parts):
                continue
            names.add(info.name)
    return sorted(names)


def clean_doc(text: str | None) -> str:
    """A docstring as Markdown: reST double backticks become single ones."""
    return _ROLE.sub(r"`\1`", (text or "").strip().replace("``", "`"))


def first_paragraph(obj: Any) -> str:
    """The first paragraph of ``obj``'s own docstring (not an inherited one), on one line."""
    doc = inspect.cleandoc(obj.__doc__) if isinstance(obj.__doc__, str) else ""
    paragraph = clean_doc(doc).split("\n\n")[0]
    return " ".join(line.strip() for line in paragraph.splitlines())


def _value(value: Any) -> str:
    return _ADDRESS.sub("", repr(value))


def _annotation(annotation: Any) -> str:
    if isinstance(annotation, str):
        return annotation
    if isinstance(annotation, type):
        return annotation.__qualname__
    return _ADDRESS.sub("", str(annotation)).replace("typing.", "")


def format_signature(name: str, obj: Any) -> str:
    """``name(params) -> return``, one parameter per line when one line would be too long."""
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return f"{name}(...)"
    params: list[str] = []
    seen_keyword_only = False
    kinds = inspect.Parameter
    for index, param in enumerate(signature.parameters.values()):
        if index == 0 and param.name in ("self", "cls"):
            continue
        if param.kind is kinds.KEYWORD_ONLY and not seen_keyword_only:
            params.append("*")
        seen_keyword_only = seen_keyword_only or param.kind in (
            kinds.KEYWORD_ONLY,
            kinds.VAR_POSITIONAL,
        )
        prefix = {kinds.VAR_POSITIONAL: "*", kinds.VAR_KEYWORD: "**"}.get(param.kind, "")
        text = prefix + param.name
        if param.annotation is not param.empty:
            text += f": {_annotation(param.annotation)}"
        if param.default is not param.empty:
            text += f" = {_value(param.default)}"
        params.append(text)
    if params and params[0] == "*" and len(params) == 1:
        params = []
    returns = ""
    if signature.return_annotation is not signature.empty:
        returns = f" -> {_annotation(signature.return_annotation)}"
    one_line = f"{name}({', '.join(params)}){returns}"
    if len(one_line) <= _WIDTH:
        return one_line
    body = "".join(f"    {param},\n" for param in params)
    return f"{name}(\n{body}){returns}"


def _defined_here(module: ModuleType, obj: Any) -> bool:
    return getattr(obj, "__module__", None) == module.__name__


def _line(obj: Any) -> int:
    try:
        return inspect.getsourcelines(obj)[1]
    except (OSError, TypeError):
        return 10**9


def _is_registry(obj: Any) -> bool:
    return callable(getattr(obj, "names", None)) and hasattr(obj, "kind")


def public_members(module: ModuleType) -> list[tuple[str, Any]]:
    """Public classes and functions defined in ``module``, in source order, then registries."""
    names = getattr(module, "__all__", None) or [n for n in vars(module) if not n.startswith("_")]
    members = []
    registries = []
    for name in names:
        obj = getattr(module, name, None)
        if (inspect.isclass(obj) or inspect.isfunction(obj)) and _defined_here(module, obj):
            members.append((name, obj))
        elif _is_registry(obj) and name.isupper() and name in vars(module):
            registries.append((name, obj))
    members.sort(key=lambda item: (_line(item[1]), item[0]))
    return members + sorted(registries, key=lambda item: item[0])


def reexports(module: ModuleType) -> list[tuple[str, str]]:
    """Names a package re-exports from its submodules: (name, defining module)."""
    out = []
    for name in sorted(getattr(module, "__all__", [])):
        obj = getattr(module, name, None)
        origin = getattr(obj, "__module__", None)
        if origin and origin != module.__name__ and origin.startswith(module.__name__ + "."):
            out.append((name, origin))
    return out


def _field_default(field: dataclasses.Field) -> str:
    if field.default is not dataclasses.MISSING:
        return _value(field.default)
    if field.default_factory is not dataclasses.MISSING:
        return f"{getattr(field.default_factory, '__name__', 'factory')}()"
    return "required"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def dataclass_table(cls: type) -> list[str]:
    """A Markdown table of a dataclass's fields."""
    rows = ["| field | type | default | help |", "|---|---|---|---|"]
    for field in dataclasses.fields(cls):
        help_text = str(field.metadata.get("help", "")) if field.metadata else ""
        rows.append(
            f"| `{field.name}` | `{_cell(_annotation(field.type))}` | "
            f"`{_cell(_field_default(field))}` | {_cell(help_text)} |"
        )
    return rows


def _methods(cls: type) -> list[tuple[str, Any]]:
    out = []
    for name, obj in vars(cls).items():
        if name.startswith("_") or not (inspect.isfunction(obj) or isinstance(obj, property)):
            continue
        out.append((name, obj))
    return sorted(out, key=lambda item: (_line(getattr(item[1], "fget", item[1])), item[0]))


def class_section(name: str, cls: type) -> list[str]:
    lines = [f"### `{name}`", ""]
    if dataclasses.is_dataclass(cls):
        lines += [f"dataclass. {first_paragraph(cls)}", ""] + dataclass_table(cls) + [""]
    else:
        bases = [b.__name__ for b in cls.__bases__ if b is not object]
        header = f"class {name}({', '.join(bases)})" if bases else f"class {name}"
        init = format_signature("__init__", cls.__init__) if "__init__" in vars(cls) else ""
        init_lines = [f"    {line}" for line in init.splitlines()]
        lines += ["```python", header, *init_lines, "```", ""]
        lines += [first_paragraph(cls), ""]
    for method_name, method in _methods(cls):
        if isinstance(method, property):
            summary = first_paragraph(method)
            lines.append(f"- `{method_name}` (property)" + (f": {summary}" if summary else ""))
        else:
            signature = format_signature(method_name, method).replace("\n", " ")
            signature = re.sub(r"\(\s+", "(", re.sub(r",\s+\)", ")", signature))
            summary = first_paragraph(method)
            lines.append(f"- `{signature}`" + (f": {summary}" if summary else ""))
    if lines[-1] != "":
        lines.append("")
    return lines


def module_page(name: str) -> tuple[str, str]:
    """(page text, one-line summary) of one module."""
    module = importlib.import_module(name)
    kind = "package" if hasattr(module, "__path__") else "module"
    lines = [f"# `{name}`", "", f"*{kind}* - source: `{_source(module)}`", ""]
    doc = clean_doc(module.__doc__)
    lines += [doc or "(no module docstring)", ""]
    exported = reexports(module)
    if exported:
        lines += ["Re-exported here:", ""]
        lines += [f"- `{n}` from [`{origin}`]({origin}.md)" for n, origin in exported]
        lines.append("")
    for member_name, obj in public_members(module):
        if _is_registry(obj):
            lines += [f"### `{member_name}`", ""]
            lines += [f"Registry of {obj.kind}s: {', '.join(f'`{n}`' for n in obj.names())}.", ""]
        elif inspect.isclass(obj):
            lines += class_section(member_name, obj)
        else:
            lines += [f"### `{member_name}`", "", "```python"]
            lines += [format_signature(member_name, obj), "```", ""]
            lines += [first_paragraph(obj), ""]
    return "\n".join(lines).rstrip() + "\n", first_paragraph(module)


def _source(module: ModuleType) -> str:
    path = Path(getattr(module, "__file__", "") or "")
    try:
        return path.resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return path.name


def build() -> dict[Path, str]:
    """Every page's path and text."""
    pages: dict[Path, str] = {}
    index = [
        "# API reference",
        "",
        "Generated by `python docs/make_api.py` from the docstrings; do not edit by hand.",
        "",
        "| module | what |",
        "|---|---|",
    ]
    for name in module_names():
        text, summary = module_page(name)
        pages[OUT / f"{name}.md"] = text
        index.append(f"| [`{name}`]({name}.md) | {_cell(summary)} |")
    pages[OUT / "index.md"] = "\n".join(index) + "\n"
    return pages


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a page is out of date")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    pages = build()
    stale = sorted(p for p in OUT.glob("*.md") if p not in pages) if OUT.exists() else []
    changed = [p for p, t in pages.items() if not p.exists() or p.read_text("utf-8") != t]
    if args.check:
        for path in changed + stale:
            print(f"out of date: {path.relative_to(ROOT)}")
        return 1 if changed or stale else 0
    OUT.mkdir(parents=True, exist_ok=True)
    for path in stale:
        path.unlink()
    for path in changed:
        path.write_text(pages[path], encoding="utf-8")
    print(f"{len(pages)} pages in {OUT.relative_to(ROOT)} ({len(changed)} written)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
