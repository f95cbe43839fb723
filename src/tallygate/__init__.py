"""tallygate: an LLM gateway that bills."""
