"""Configuration: frozen dataclasses per stage (schema), loaded from pipelines.yaml + a recipe + overrides (loader)."""

from dfprep.config.loader import RANGES, available_recipes, load_config, parse_override, read_yaml
from dfprep.config.schema import (FUSIONS, MAP_METHODS, TARGETS, AlignmentConfig, CamConfig, CamRecipe, DatasetConfig,
                                  DetectionConfig, OutputConfig, PipelineConfig, RayConfig, SamplingConfig)

__all__ = ["FUSIONS", "MAP_METHODS", "RANGES", "TARGETS", "AlignmentConfig", "CamConfig", "CamRecipe", "DatasetConfig",
           "DetectionConfig", "OutputConfig", "PipelineConfig", "RayConfig", "SamplingConfig", "available_recipes",
           "load_config", "parse_override", "read_yaml"]
