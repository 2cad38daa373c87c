"""Configuration: frozen dataclasses per stage (schema), defaults in the dataclasses ← a recipe ← overrides (loader); packaged resources (paths)."""

from dfprep.config import paths
from dfprep.config.loader import RANGES, available_recipes, load_config, parse_override, read_yaml
from dfprep.config.schema import (FUSIONS, MAP_METHODS, TARGETS, AlignmentConfig, CamConfig, CamRecipe, DatasetConfig,
                                  DetectionConfig, OutputConfig, PipelineConfig, RayConfig, SamplingConfig)

__all__ = ["FUSIONS", "MAP_METHODS", "RANGES", "TARGETS", "AlignmentConfig", "CamConfig", "CamRecipe", "DatasetConfig",
           "DetectionConfig", "OutputConfig", "PipelineConfig", "RayConfig", "SamplingConfig", "available_recipes",
           "load_config", "parse_override", "paths", "read_yaml"]
