"""nodeforge: bootable node images for hybrid Kubernetes clusters."""

__version__ = "0.1.0"
TOOL = "nodeforge"
