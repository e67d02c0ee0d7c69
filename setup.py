# Metadata lives in setup.cfg; this shim lets older pip versions and `python setup.py` work.
from setuptools import setup

setup()
