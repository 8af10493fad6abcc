"""Step numbers as both sides trade them: a training step is >= 0, and NO_STEP says there is none.

The workers' snapshot API and the sidecar's commit rule meet on this value (nothing saved, nothing
committed yet); it lives here so the worker side needs nothing of the sidecar's package.
"""

NO_STEP = -1
