"""The version of queuectl: one place, read by setup.cfg, the package and `queuectl --version`."""
__version__ = "0.1.0"
