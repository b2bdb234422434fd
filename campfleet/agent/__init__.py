"""The ship agent: reports what the ship is, applies what the mux says it should be.

Stdlib only and Python 3.9 compatible: it runs on the ship AMI's system Python, installed
without dependencies (PYTHONPATH=/opt/campfleet).
"""

__version__ = "0.1.0"
