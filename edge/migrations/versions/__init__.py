"""Alembic revisions of the lane service schema, oldest first (`0001_initial`, ...)."""
