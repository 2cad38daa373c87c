"""The `dfprep` command line: parse, build the config, call the library, print a summary.

app holds the group and its error handling; build the commands that write outputs (datasets, models,
extract, maps, demo); look those that read them (stats, verify, preview, leakage); the torch side adds
train and evaluate.
"""

from dfprep.cli import build, look  # noqa: F401 - importing them registers their commands on the group
from dfprep.cli.app import cli, main

__all__ = ["cli", "main"]
