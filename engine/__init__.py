"""Strata's bundled inference engine (model, paged KV cache, prefill and decode workers)."""
