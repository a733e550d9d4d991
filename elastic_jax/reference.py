"""The CLI and config reference (docs/reference.md), generated from the code so it cannot drift from it.

    python -m elastic_jax.reference > docs/reference.md

It walks `cli.build_parser()` (every verb, its arguments, defaults and help) and the tree of config sections
below `ExperimentConfig` (every field, its type, default and description). A field's description is, in order:
`dataclasses.field(metadata={"help": ...})`, a `#:` comment at the end of its line (or on the lines above it), or
an entry `name: text` (also `a / b: text`) in its section's docstring. tests/test_reference_docs.py fails when
docs/reference.md differs from this module's output or a field has no description.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import io
import math
import re
import sys
import textwrap
import tokenize
import typing
from pathlib import Path
from typing import Any

from elastic_jax import schema

COMMAND = "python -m elastic_jax.reference > docs/reference.md"
MISSING = "(no description)"

# How to choose the elastic knobs: guidance the field table cannot carry (kept beside the generator so the page
# stays one generated file).
ELASTIC_GUIDANCE = """\
### Choosing budgets and the elastic knobs

- **`elastic.router.budgets`** are fractions of the parent under `metric`; 1.0 (the parent itself) must be one of
  them and is never shrunk. Three budgets (1.0 / 0.7 / 0.4) is the method's default: every extra budget is one more
  student forward and backward per step (static mode) or one more masked parent pass (mask mode), so the step time
  grows about linearly with the count. A budget below what the smallest candidates (`min_fraction` of every axis)
  add up to cannot be reached: before training, `elastic-jax slice --budget B` on the importance-ranked parent
  shows the zero-shot architecture a fraction buys, or says how far the closest one is.
- **`elastic.router.metric`**: `total_params` for a model that must fit a parameter count (storage, download);
  `active_params` for MoE parents when what you pay for is compute per token (removing routed experts does not
  reduce it, since every token still uses its top-k, so the router shrinks widths instead); `memory` when the
  deployment limit is device memory (weights plus KV cache and SSM state). Pick the one your deployment is priced
  in: the resource loss and every report use the same accounting (elastic/accounting.py).
- **`elastic.router.tolerance`**: how far a budget's size may sit from its target before the resource loss pushes
  (and within which the deployed argmax architecture is repaired). 0.05 keeps every budget within 5%; tighter
  bands leave the router fewer architectures that qualify, looser ones let it trade size for loss.
- **`elastic.router.num_choices`** and **`min_fraction`**: each axis offers `num_choices` widths evenly spaced from
  the parent's down to `min_fraction` of it (heads and experts in whole groups, channels aligned to
  `width_multiple`). More choices give finer architectures and a larger router; set `min_fraction` at or below
  your smallest budget so it can be reached by shrinking a few axes rather than all of them.
- **`elastic.router.heterogeneous`**: False picks one width per axis for all layers (what Hugging Face configs can
  express, so every budget exports to `transformers`); True picks per layer (more freedom and a larger router, but
  nested models that `export-hf` refuses: they stay elastic_jax checkpoints).
- **`elastic.static_after`**: the fraction of the steps after which each budget's architecture is fixed to the
  router's argmax and trains as a static prefix slice (faster steps, no more architecture search). 0 fixes the
  architectures at the first step, before the router has learnt anything; 1 never fixes them (every step runs the
  masked parent). 0.5-0.6 (the configs' values) lets the router settle first; the architectures fixed then are the
  ones `slice` and `export-hf` cut for the trained budgets.
- **`elastic.stage2_weights`**: one weight per budget for stage 2 (None: uniform); raise the small budgets' weights
  when they lag, the full budget's when the parent's quality must be kept.
"""


# ---- command line -------------------------------------------------------------------------------------------------
def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _usage(parser: argparse.ArgumentParser) -> str:
    """One-line usage independent of the terminal width."""
    formatter = argparse.HelpFormatter(parser.prog, width=100_000)
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups, prefix="")
    return " ".join(formatter.format_help().split())


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _code(text: Any) -> str:
    return f"`{_cell(text)}`"


def _arg_rows(parser: argparse.ArgumentParser) -> list[str]:
    groups = {id(a): g for g in parser._mutually_exclusive_groups for a in g._group_actions}
    rows = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction) or not action.option_strings:
            continue
        name = ", ".join(action.option_strings)
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            kind = "flag"
        elif action.choices is not None:
            kind = " / ".join(str(c) for c in action.choices)
        else:
            kind = action.type.__name__ if isinstance(action.type, type) else "str"  # a parser function reads text
            kind = f"{kind} ..." if action.nargs in ("+", "*") else kind
        kind += " (repeatable)" if isinstance(action, argparse._AppendAction) else ""
        group = groups.get(id(action))
        if group is not None:
            names = " / ".join(a.option_strings[0] for a in group._group_actions)
            required = f"one of {names}" if group.required else f"no (at most one of {names})"
        else:
            required = "yes" if action.required else "no"
        default = "" if action.default is None or action.default is False or action.required else _code(action.default)
        help_text = argparse.HelpFormatter(parser.prog)._expand_help(action) if action.help else ""  # %(default)s
        rows.append(f"| {_code(name)} | {_cell(kind)} | {required} | {default} | {_cell(help_text)} |")
    return rows


def cli_reference(parser: argparse.ArgumentParser) -> list[str]:
    """The command-line part of the page: global options, then one section per verb in registration order."""
    out = ["## Command line", "", f"`{_usage(parser)}`", "",
           "Every verb that takes `--config` (a file, or a name in `configs/`) also accepts `--config.a.b=value` "
           "overrides of any [config field](#config), e.g. `--config.elastic.router.budgets='(1.0, 0.5)'`.", "",
           "| option | value | required | default | description |", "|---|---|---|---|---|",
           *_arg_rows(parser), ""]
    subs = _subparsers(parser)
    out += ["| verb | what it does |", "|---|---|"]
    out += [f"| [`{name}`](#elastic-jax-{name}) | {_cell(sub.description or '')} |" for name, sub in subs.items()]
    out.append("")
    for name, sub in subs.items():
        out += [f"### elastic-jax {name}", "", sub.description or "", "", f"`{_usage(sub)}`", ""]
        rows = _arg_rows(sub)
        if rows:
            out += ["| option | value | required | default | description |", "|---|---|---|---|---|", *rows, ""]
    return out


# ---- config tree --------------------------------------------------------------------------------------------------
def _docstring_entries(cls: type) -> dict[str, str]:
    """{field: text} of docstring lines `name: text` / `a / b: text` (continued on more-indented lines)."""
    doc = inspect.cleandoc(cls.__doc__ or "")
    names = {f.name for f in dataclasses.fields(cls)}
    entries: dict[str, str] = {}
    current: list[str] | None = None
    for line in doc.splitlines():
        match = re.match(r"^([A-Za-z_]\w*(?:\s*/\s*[A-Za-z_]\w*)*)\s*(?:->\s*[A-Za-z_]\w*\s*)?:\s+(.*)$", line)
        keys = re.findall(r"[A-Za-z_]\w*", match.group(1) + line[match.end(1):line.index(":")]) if match else []
        if match and keys and all(k in names for k in keys):
            current = keys
            for key in keys:
                entries[key] = match.group(2).strip()
        elif current and line.startswith((" ", "\t")) and line.strip():
            for key in current:
                entries[key] += " " + line.strip()
        else:
            current = None
    return {key: text.rstrip(".") for key, text in entries.items()}


def _comment_entries(cls: type) -> dict[str, str]:
    """{field: text} of `#:` comments at the end of a field's line or on the lines right above it."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    lines = source.splitlines()
    comments = {tok.start[0]: tok.string[2:].strip() for tok in tokenize.generate_tokens(io.StringIO(source).readline)
                if tok.type == tokenize.COMMENT and tok.string.startswith("#:")}
    entries = {}
    for node in ast.parse(source).body[0].body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        row = node.lineno
        if row in comments and lines[row - 1].lstrip()[:2] != "#:":
            entries[node.target.id] = comments[row]
            continue
        above = []
        while row - 1 in comments and lines[row - 2].lstrip().startswith("#:"):
            row -= 1
            above.insert(0, comments[row])
        if above:
            entries[node.target.id] = " ".join(above)
    return entries


def descriptions(cls: type) -> dict[str, str]:
    """{field: one-line description} of a config section (metadata help, `#:` comment, docstring entry)."""
    docs, comments = _docstring_entries(cls), _comment_entries(cls)
    out = {}
    for name, hint in schema.field_types(cls).items():
        f = next(f for f in dataclasses.fields(cls) if f.name == name)
        sub = schema.section_type(hint)
        own = f.metadata.get("help") or comments.get(name) or docs.get(name)
        out[name] = own or (f"the {sub.__name__} section (below)" if sub else MISSING)
    return out


def _type_name(hint: Any) -> str:
    if hint is type(None):
        return "None"
    if isinstance(hint, type) and not typing.get_args(hint):
        return hint.__name__
    text = str(hint).replace("typing.", "")
    return re.sub(r"[\w.]+\.(\w+)", r"\1", text).replace("NoneType", "None")


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
        if dataclasses.is_dataclass(value):
            return "(section)"
    else:
        return "(required)"
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return _code(_plain_repr(value))


def _plain_repr(value: Any) -> str:
    if isinstance(value, tuple):
        return "(" + ", ".join(_plain_repr(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return repr(value)


def sections(cls: type, path: str = "") -> list[tuple[str, type]]:
    """(dotted path, section class) of `cls` and every section below it, depth first in field order."""
    out = [(path, cls)]
    for name, hint in schema.field_types(cls).items():
        sub = schema.section_type(hint)
        if sub is not None:
            out += sections(sub, schema.join(path, name))
    return out


def _source_file(cls: type) -> str:
    module = sys.modules[cls.__module__].__file__ or ""
    parts = Path(module).parts
    return "/".join(parts[len(parts) - 1 - parts[::-1].index("elastic_jax"):]) if "elastic_jax" in parts else module


def config_reference(root: type) -> list[str]:
    """The config part of the page: one table per section of the experiment tree."""
    out = ["## Config", "",
           "An experiment config (`configs/*.py`: `get_config()` returns an `ml_collections.ConfigDict`) is read into "
           "one tree of frozen dataclasses, `ExperimentConfig`, validated before anything is compiled; a bad value "
           "is one `ConfigError` naming the dotted field path and what is allowed. Sections:", ""]
    tree = sections(root)
    out += [f"- [`{path or '(root)'}`](#{_anchor(path)}): {cls.__name__}" for path, cls in tree]
    out.append("")
    for path, cls in tree:
        doc = inspect.cleandoc(cls.__doc__ or "").split("\n\n")[0].replace("\n", " ")
        out += [f"### {path or '(root)'}", "", f"`{cls.__name__}` in `{_source_file(cls)}`. {doc}", "",
                "| field | type | default | description |", "|---|---|---|---|"]
        helps = descriptions(cls)
        types_ = schema.field_types(cls)
        for f in dataclasses.fields(cls):
            if f.init:
                name = schema.join(path, f.name)
                out.append(f"| {_code(name)} | {_code(_type_name(types_[f.name]))} | {_default(f)} | "
                           f"{_cell(helps[f.name])} |")
        out.append("")
        if path == "elastic.router":
            out += [ELASTIC_GUIDANCE]
    return out


def _anchor(path: str) -> str:
    return re.sub(r"[^a-z0-9 -]", "", (path or "(root)").lower()).replace(" ", "-")


def missing_descriptions(root: type) -> list[str]:
    """Dotted paths of config fields without a description."""
    return [schema.join(path, name) for path, cls in sections(root)
            for name, text in descriptions(cls).items() if text == MISSING]


def render() -> str:
    """The whole of docs/reference.md."""
    from elastic_jax.cli import build_parser
    from elastic_jax.experiment import ExperimentConfig

    lines = ["# CLI and config reference", "",
             f"Generated from the code by `{COMMAND}`; do not edit by hand (tests/test_reference_docs.py fails when "
             "this page is stale).", "",
             "- [Command line](#command-line)", "- [Config](#config)", "",
             *cli_reference(build_parser()), *config_reference(ExperimentConfig)]
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
