"""Llama-family decoders with prompt parameters (private implementation)."""
