"""DVC pipeline stages for the TensorFlow Eager tutorials.

Importing the package pins the host-dependent numerics (stages/common/numerics.py)
before anything imports NumPy or TensorFlow, so every stage, command, test and
benchmark computes the same numbers on every supported machine.
"""

from stages.common import numerics

NUMERICS = numerics.configure()
