"""maskserve: serve MaskFormer segmentation models over HTTP."""

__version__ = "0.1.0"
