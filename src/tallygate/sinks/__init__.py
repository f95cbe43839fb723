"""Sinks: where usage events are delivered (Lago, a JSONL file, a webhook)."""
