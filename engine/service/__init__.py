"""The engine's workers as network services (prefill and decode in separate processes)."""
