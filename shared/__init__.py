"""spotsweep's domain and ports: what the submitter and the workers agree on.

Nothing in this package reads the environment or imports TensorFlow.
"""

SCHEMA_VERSION = 1
