"""`python -m queuectl.cli`, as other implementations are run: the same as `queuectl`."""
from . import entry

entry()
