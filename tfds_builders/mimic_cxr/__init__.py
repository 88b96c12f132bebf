"""MIMIC-CXR-JPG TFDS builder; importing this module registers `mimic_cxr`."""

from tfds_builders.mimic_cxr.mimic_cxr_dataset_builder import MimicCxr, MimicCxrConfig

__all__ = ["MimicCxr", "MimicCxrConfig"]
