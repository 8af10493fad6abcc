"""What runs inside the user's training process: bootstrap, re-entry, heartbeats, the snapshot API.

Nothing here imports the sidecar package (`supervisor`):
tests/unit/test_worker_boundary.py checks it.
"""
