"""train-supervisor: the per-pod brain that decides what happens when a rank fails."""
