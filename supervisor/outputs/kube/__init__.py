"""Telling Kubernetes what the supervisor saw: Events on the pod, a condition and taint on the node.

Everything here is opt-in (SUPERVISOR_KUBE_*) and needs the `kube` extra (the
official `kubernetes` client), imported only when switched on. Decisions are
pure (notes.py: our job events -> Kubernetes Events; correlator.py: aggregation
and rate; settings.py); the client calls run on one thread off the event loop
(reporter.py), so an API server that refuses, throttles or hangs never slows
training.
"""
