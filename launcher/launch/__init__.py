"""train-launch itself: torchrun's flags, the worker processes, the link to the sidecar."""
