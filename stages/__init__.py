"""DVC pipeline stages for the TensorFlow Eager tutorials.

Importing the package pins the host-dependent numerics (stages/common/numerics.py)
before anything imports NumPy or TensorFlow, so every stage, command, test and
benchmark computes the same numbers on every supported machine. In a stage run as a
cluster worker (``TF_CONFIG``) it also blocks SIGTERM before those imports start their
threads (stages/common/sigterm.py), so that the cluster watchdog sees a SIGTERM.
"""

from stages.common import numerics, sigterm

NUMERICS = numerics.configure()
sigterm.hold_from_start()
