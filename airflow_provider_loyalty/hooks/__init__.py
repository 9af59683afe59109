"""hooks of the loyalty provider."""
