"""The README and the documentation site (docs/, mkdocs.yml): the README stays short, its first code block is the
two set-up commands CI runs, no relative link is broken, and the CLI reference covers every command of
`ddit-export --help` (computed from the click group, not a list kept by hand)."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest

from ddit_export.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SETUP = [
    'pip install torch==2.13.0 && pip install -e ".[dev]" && ddit-export build && ddit-export generate --bundle '
    "engines/flux-mini-64 --out out/flux-mini-64.png --trace out/flux-mini-64.json",
    "python -m pytest",
]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _commands() -> list[str]:
    ctx = click.Context(main, info_name="ddit-export")
    return [n for n in main.list_commands(ctx) if not main.get_command(ctx, n).hidden]


def _md_files() -> list[Path]:
    return [README, *sorted((ROOT / "docs").rglob("*.md"))]


def test_readme_is_short():
    assert len(README.read_text().splitlines()) <= 200


def test_readme_first_code_block_is_the_setup_commands():
    m = re.search(r"```[a-z]*\n(.*?)```", README.read_text(), re.S)
    assert m, "README has no code block"
    assert [line for line in m.group(1).splitlines() if line.strip()] == SETUP


def test_readme_headings_name_capabilities():
    for line in README.read_text().splitlines():
        if line.startswith("#"):
            assert not re.search(r"\bissues? \d", line), line


@pytest.mark.parametrize("md", _md_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_exist(md: Path):
    text = re.sub(r"```.*?```", "", md.read_text(), flags=re.S)  # links inside code blocks are not links
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # URLs, mailto:, anchors on the same page
        path = target.split("#", 1)[0]
        if not (md.parent / path).exists():
            broken.append(target)
    assert not broken, f"{md.relative_to(ROOT)}: {broken}"


def test_cli_reference_covers_every_command():
    page = (ROOT / "docs" / "reference" / "cli.md").read_text()
    blocks = re.findall(r"::: mkdocs-click\n((?:    .*\n?)+)", page)
    assert blocks, "no mkdocs-click block"
    opts = [dict(re.findall(r":(\w+):\s*(.*)", b)) for b in blocks]
    root = [o for o in opts if o.get("module") == "ddit_export.cli" and o.get("command") == "main"]
    assert root and root[0].get("prog_name") == "ddit-export"
    if root[0].get("list_subcommands") != "true":  # otherwise every command needs a block of its own
        covered = {o.get("prog_name", "").removeprefix("ddit-export ").strip() for o in opts}
        assert set(_commands()) <= covered
    assert len(_commands()) >= 10


@pytest.mark.skipif(shutil.which("mkdocs") is None and not __import__("importlib").util.find_spec("mkdocs"),
                    reason="mkdocs not installed (the docs extra)")
def test_mkdocs_build_strict(tmp_path):
    pytest.importorskip("mkdocs_click")
    pytest.importorskip("material")
    env = {**__import__("os").environ, "NO_MKDOCS_2_WARNING": "1",
           "PYTHONPATH": str(ROOT) + ":" + __import__("os").environ.get("PYTHONPATH", "")}
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                       cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    html = (tmp_path / "site" / "reference" / "cli" / "index.html").read_text()
    ctx = click.Context(main, info_name="ddit-export")
    for name in _commands():
        assert f'id="ddit-export-{name}"' in html, name
        cmd = main.get_command(ctx, name)
        for p in cmd.params:
            if isinstance(p, click.Option) and not p.hidden:
                for o in p.opts + p.secondary_opts:
                    assert f"<code>{o}</code>" in html, f"{name} {o}"
