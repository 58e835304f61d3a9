"""xscreen training package."""
