"""Thin shim so `python cli.py ...` works from a checkout; the CLI lives in ddit_export.cli."""
from ddit_export.cli import main

if __name__ == "__main__":
    main()
