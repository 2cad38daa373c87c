"""Configuration: frozen dataclasses per stage, loaded from pipelines.yaml + a recipe + overrides, validated."""

from dfprep.config.loader import (RANGES, AlignmentConfig, CamConfig, DatasetConfig, DetectionConfig, OutputConfig,
                                  PipelineConfig, RayConfig, SamplingConfig, available_recipes, load_config,
                                  parse_override, read_yaml)

__all__ = ["RANGES", "AlignmentConfig", "CamConfig", "DatasetConfig", "DetectionConfig", "OutputConfig",
           "PipelineConfig", "RayConfig", "SamplingConfig", "available_recipes", "load_config", "parse_override",
           "read_yaml"]
