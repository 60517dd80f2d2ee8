"""Private implementation modules of j6jax; use the public packages."""
