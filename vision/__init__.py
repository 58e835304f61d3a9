"""xscreen vision package."""
