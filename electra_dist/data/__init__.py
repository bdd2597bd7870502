"""Data: tokenizer, shards, streaming loader and masking."""
