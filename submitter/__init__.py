"""The `submit` command: studies in, leaderboards out. Never imports TensorFlow."""
