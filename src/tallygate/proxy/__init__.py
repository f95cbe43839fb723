"""The OpenAI-compatible proxy server."""
