"""CLI commands that live beside their feature, one module each, each exposing a click ``command``.

``ddit_export.cli`` registers every module here. Keep imports at module level light (click only): heavy work is
imported inside the command function, so ``ddit-export --help`` stays fast and works without optional packages.
"""
