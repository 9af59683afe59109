"""operators of the loyalty provider."""
