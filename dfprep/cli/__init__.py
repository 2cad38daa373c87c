"""The `dfprep` command line (the console script's entry point is `main`)."""

from dfprep.cli.app import cli, main

__all__ = ["cli", "main"]
