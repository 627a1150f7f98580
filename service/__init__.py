"""latentface's adapters: gRPC server, config, auth, client and CLI over the ``embeddings`` domain."""
