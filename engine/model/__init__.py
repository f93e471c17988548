"""The Llama family (Llama, Mistral, Qwen2) over a paged KV cache, and its loading."""
