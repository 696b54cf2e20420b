"""User-facing surfaces: offline LLM, sentence-transformers drop-in, CLI, server."""
