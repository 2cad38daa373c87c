"""The sharded jobs: the persisted plan, extract (one video → samples + status row), pairs, maps."""
