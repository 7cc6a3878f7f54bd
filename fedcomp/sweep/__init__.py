"""Sweeps: override lists from axes (spec), jobs and run groups (plan), many runs in one
compiled program (group), and the results table and plots (report).

`python -m launch.sweep --config=X.py[:arg] --workdir=DIR` runs them.
"""

from fedcomp.sweep.spec import axis, expand, product, seeds, zipped

__all__ = ['axis', 'expand', 'product', 'seeds', 'zipped']
