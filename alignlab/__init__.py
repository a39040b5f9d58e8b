"""alignlab: learning from human feedback."""

__version__ = "0.1.0"
