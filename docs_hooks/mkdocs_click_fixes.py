"""MkDocs hook: two fixes to mkdocs-click 0.9 for this CLI, applied at doc-build time only.

- Subcommands are registered with ``main.add_command(module.command, name=...)``, so each command object is named
  ``command``; the reference must use the name ``ddit-export --help`` lists (the group's key).
- click >= 8.3 marks an option without a default with a sentinel (``UNSET``), which mkdocs-click's table style prints
  verbatim; show what ``--help`` shows instead (nothing, or "required").
"""
from __future__ import annotations

import click
from mkdocs_click import _docs

_orig_sub_commands = _docs._get_sub_commands
_orig_row = _docs._format_table_option_row


def _get_sub_commands(command, ctx):
    subs = _orig_sub_commands(command, ctx)
    names = {id(c): n for n, c in getattr(command, "commands", {}).items()}
    for c in subs:
        if id(c) in names:
            c.name = names[id(c)]
    return subs


def _format_table_option_row(option: click.Option) -> str:
    default = option.default
    if repr(default).endswith("UNSET"):  # click >= 8.3: no default given
        option = _copy_with_default(option, None)
    return _orig_row(option)


def _copy_with_default(option: click.Option, default):
    import copy

    o = copy.copy(option)
    o.default = default
    return o


_docs._get_sub_commands = _get_sub_commands
_docs._format_table_option_row = _format_table_option_row
