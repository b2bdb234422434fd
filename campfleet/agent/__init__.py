"""The ship agent: reports what the ship is, applies what the mux says it should be.

Stdlib only, Python 3.11 (Debian 12's python3): it runs on the ship AMI's system Python,
installed without dependencies (PYTHONPATH=/opt/campfleet).
"""

__version__ = "0.1.0"
