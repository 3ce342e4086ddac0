"""Serving: the decoding engine, its scheduler and the OpenAI-compatible HTTP API."""
