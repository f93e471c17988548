"""The engine's paged KV cache: pages that are, byte for byte, the store's blocks."""
