"""What the sidecar gives the pod's worker processes: their environment, ports, warm spares."""
