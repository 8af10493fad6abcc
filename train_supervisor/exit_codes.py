"""Exit codes of train-launch: part of the contract (Job podFailurePolicy keys on them)."""

SUCCEEDED = 0
#: Bad command line or configuration; nothing was started.
USAGE_ERROR = 2
#: The job was given up: restart budget spent or a crash loop detected.
GAVE_UP = 3
#: This pod must be replaced (hardware fault); the job itself can go on.
REPLACE_POD = 4
#: The pod's supervisor sidecar stayed away longer than --supervisor-grace: this pod
#: goes (the workers trained on meanwhile); a new pod for its index re-joins the job.
SUPERVISOR_LOST = 5
#: Stopped by SIGTERM (pod deletion, preemption): 128 + SIGTERM.
TERMINATED = 143
