"""The gRPC side of the supervisor: servers, servicers, the leader/follower links, the call gate."""
