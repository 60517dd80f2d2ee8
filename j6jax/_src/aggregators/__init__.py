"""Private implementation of :mod:`j6jax.aggregators`, one module a method."""
