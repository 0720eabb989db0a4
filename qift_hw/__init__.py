"""qift-hw: Qift 2-bit weight inference from algorithm to silicon."""

__version__ = "0.1.0"
