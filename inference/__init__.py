"""xscreen inference package."""
