"""What the supervisor tells the world besides gRPC: log lines, Prometheus metrics, Kubernetes."""
