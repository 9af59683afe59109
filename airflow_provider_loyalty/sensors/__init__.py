"""sensors of the loyalty provider."""
