"""TFDS builder of the synthetic chest radiograph dataset (`synthetic_cxr`)."""

from tfds_builders.synthetic_cxr.synthetic_cxr_dataset_builder import Builder, SyntheticCxr, SyntheticCxrConfig

__all__ = ["Builder", "SyntheticCxr", "SyntheticCxrConfig"]
