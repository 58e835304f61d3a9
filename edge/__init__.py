"""xscreen edge package."""
