"""train-supervisor: the in-pod supervisor (the sidecar, and the embedded one of --standalone)."""

# supervisord is also imported as `supervisor`; train-launch checks for this marker.
IS_TRAIN_SUPERVISOR = True
