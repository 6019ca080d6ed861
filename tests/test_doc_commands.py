"""Every `ddit-export ...` command written in the README and the docs (code blocks, and inline code that is a whole
command) parses against the CLI as it is: the command exists, every option exists and takes what it is given, a
choice is one of the option's choices. So a renamed or removed option cannot leave a command in the docs that no
longer runs. (Running them is what CI does for the README's two set-up commands; the rest need weights, GPUs or
minutes.)"""
import re
import shlex
from pathlib import Path

import click
import pytest

from ddit_export.cli import main

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", ROOT / "engines" / "README.md"] + sorted((ROOT / "docs").rglob("*.md"))


def snippets(text: str):
    """(kind, text) of the fenced blocks, the indented blocks and the inline code of a markdown file."""
    for m in re.finditer(r"```[a-z]*\n(.*?)```", text, re.S):
        yield "block", m.group(1)
    rest = re.sub(r"```.*?```", "", text, flags=re.S)
    cur = []
    for line in rest.split("\n") + [""]:
        if line.startswith("    ") and not line.strip().startswith(("- ", "* ", "|")):
            cur.append(line[4:])
        elif cur:
            yield "block", "\n".join(cur)
            cur = []
    for m in re.finditer(r"`(ddit-export [^`]+)`", rest):
        yield "inline", " ".join(m.group(1).split())


def commands(text: str):
    """The `ddit-export ...` segments of a snippet: continuation lines joined, split at && ; || and pipes."""
    for line in re.sub(r"\s*\\\n\s*", " ", text).split("\n"):
        for seg in re.split(r"&&|;|\|\||(?<=\s)\|(?=\s)", line.split(" #")[0]):
            seg = seg.strip().removeprefix("$ ").strip()
            if seg.startswith("ddit-export "):
                yield seg


def problem(seg: str, inline: bool = False) -> str | None:
    """Why ``seg`` does not parse against the CLI, or None. Placeholders (<...>) stand for one value."""
    argv = shlex.split(re.sub(r"<[^>]*>", "X", seg))[1:]
    if not argv or argv[0].startswith("-"):
        return None  # `ddit-export --help` and the like
    ctx = click.Context(main, info_name="ddit-export")
    cmd, rest = main, argv
    while isinstance(cmd, click.Group) and rest and not rest[0].startswith("-"):
        nxt = cmd.get_command(ctx, rest[0])
        if nxt is None:
            return f"unknown command {rest[0]!r}"
        ctx, cmd, rest = click.Context(nxt, info_name=rest[0], parent=ctx), nxt, rest[1:]
    try:
        opts, _, _ = cmd.make_parser(ctx).parse_args(list(rest))
    except click.UsageError as e:
        if inline and "requires an argument" in str(e) and str(e).startswith(f"Option '{rest[-1]}'"):
            return None  # prose naming an option (`ddit-export generate --bundle`), not a command
        return str(e)
    for p in cmd.params:
        v = opts.get(p.name)
        if isinstance(p.type, click.Choice) and isinstance(v, str) and not re.fullmatch(r"[A-Z_]+|X", v):
            if not set(v.split("|")) <= set(p.type.choices):  # "a|b": a synopsis of two choices
                return f"{p.opts[0]} {v!r} is not one of {list(p.type.choices)}"
    return None


def documented():
    for f in DOCS:
        for kind, text in snippets(f.read_text()):
            for seg in commands(text):
                yield f.relative_to(ROOT), kind, seg


def test_every_documented_command_parses():
    found = list(documented())
    assert len(found) > 100  # the README and the guides hold well over a hundred
    bad = [f"{f}: {seg[:100]} -> {why}" for f, kind, seg in found if (why := problem(seg, kind == "inline"))]
    assert bad == []


@pytest.mark.parametrize("seg, why", [
    ("ddit-export build --no-such-option 1", "No such option"),
    ("ddit-export nosuch --x", "unknown command"),
    ("ddit-export adapt --schedules sometimes", "is not one of"),
    ("ddit-export generate --bundle", "requires an argument"),
])
def test_the_check_catches_drift(seg, why):
    assert why in (problem(seg) or "")


def test_snippets_join_continuations_and_split_chains():
    md = ("text\n\n    ddit-export build \\\n        --model tiny\n\n```bash\npip install x && ddit-export generate "
          "--bundle b --out o.png\n```\nand `ddit-export inspect\nB` inline\n")
    segs = [s for _, t in snippets(md) for s in commands(t)]
    assert sorted(segs) == sorted(["ddit-export build --model tiny", "ddit-export generate --bundle b --out o.png",
                                   "ddit-export inspect B"])
