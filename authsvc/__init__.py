"""authsvc: gRPC two-factor authentication service with a Rust core."""
