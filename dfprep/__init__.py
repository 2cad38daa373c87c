"""dfprep: deepfake-detection video datasets to WebDataset shards of aligned faces."""

__version__ = "0.1.0"
