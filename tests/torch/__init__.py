"""Tests of the torch side (skipped without torch)."""
