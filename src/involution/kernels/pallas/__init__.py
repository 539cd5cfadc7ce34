"""The Pallas kernels (JAX binding: `involution.backends.jax_backend`)."""
