"""Prefill and decode workers, and what passes between them."""
