"""The output contract: file names, keys, storage, the shard writer and its checked reader, integrity, locks."""
