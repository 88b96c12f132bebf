"""IU X-ray (Open-i) TFDS builder; importing this module registers `iu_xray`."""

from tfds_builders.iu_xray.iu_xray_dataset_builder import IuXray, IuXrayConfig

__all__ = ["IuXray", "IuXrayConfig"]
