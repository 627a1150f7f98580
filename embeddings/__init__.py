"""latentface's domain: decoding, detection, encoding, the gallery, matching, latent analysis and audits.

Nothing in this package imports gRPC; ``service/`` adapts it.
"""
