"""triggers of the loyalty provider."""
