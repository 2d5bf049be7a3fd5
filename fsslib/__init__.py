"""fsslib: few-shot semantic segmentation, one slim package for teaching and analysis."""

__version__ = "0.1.0"
