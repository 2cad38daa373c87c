"""Tests of the dataset adapters."""
