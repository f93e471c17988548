"""The store's gRPC server: servicers, error mapping, auth, metrics, lifecycle."""
