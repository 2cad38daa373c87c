"""Runs jobs: lock, skip committed, guards, progress, retries, finalize, report; in-process or on Ray."""
