"""dfprep's tests (a package, so tests/ and tests/torch/ can be collected in one run)."""
