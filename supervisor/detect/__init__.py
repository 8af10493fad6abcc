"""Probes of the pod (processes, stacks, GPUs, metrics): they measure and hand values to the
rules."""
