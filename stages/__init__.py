"""DVC pipeline stages for the TensorFlow Eager tutorials."""
