"""Configuration: frozen dataclasses per stage (schema; they hold the defaults), loaded as defaults ← a recipe ←
overrides (loader); the packaged recipes and landmark registry and the user's folders (paths)."""

from dfprep.config import paths
from dfprep.config.loader import (RANGES, available_recipes, dataset_options, load_config, parse_override,
                                  read_yaml)
from dfprep.config.schema import (ADAPTER_OPTIONS, COMMON_DATASET_KEYS, FUSIONS, MAP_METHODS, TARGETS,
                                  AlignmentConfig, CamConfig, CamRecipe, CelebDFOptions, DatasetConfig,
                                  DeeperForensicsOptions, DetectionConfig, DFDCOptions, DFDCPOptions, FFPPOptions,
                                  FolderOptions, OutputConfig, PipelineConfig, RayConfig, SamplingConfig)

__all__ = ["ADAPTER_OPTIONS", "COMMON_DATASET_KEYS", "FUSIONS", "MAP_METHODS", "RANGES", "TARGETS", "AlignmentConfig",
           "CamConfig", "CamRecipe", "CelebDFOptions", "DFDCOptions", "DFDCPOptions", "DatasetConfig",
           "DeeperForensicsOptions", "DetectionConfig", "FFPPOptions", "FolderOptions", "OutputConfig",
           "PipelineConfig", "RayConfig", "SamplingConfig", "available_recipes", "dataset_options", "load_config",
           "parse_override", "paths", "read_yaml"]
