"""Where copies of committed training state live (shared memory, a peer pod, durable storage),
the commit rule, and the rounds that move copies between them."""
