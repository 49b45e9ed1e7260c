"""Runs untrusted LogiCode programs in isolated worker processes."""
