"""The job's rules, pure: events in, effects out; no I/O, no clock (callers pass `now`)."""
