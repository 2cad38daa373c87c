"""Shared test helpers: synthetic clips and OUT folders, run helpers, a faulty filesystem, reference code."""
