"""Runnable examples of sad_jax (importable as a package for the tests)."""
