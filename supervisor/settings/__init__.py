"""The sidecar's configuration: SUPERVISOR_* variables and flags, parsed and checked once (pure)."""
