"""train-launch: a torchrun drop-in that restarts only the failed rank, in place."""
