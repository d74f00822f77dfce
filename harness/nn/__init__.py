"""Shared torch building blocks: SID transformer with KV cache, batched beam search, generative retrieval engine."""
