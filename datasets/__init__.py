"""xscreen datasets package."""
