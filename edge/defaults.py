"""Default locations of the lane service's database and data directory.

These live in a module with no third-party imports so that the command line (which may only import typer at
load time, see `vision/cli.py`) can show them in `--help` on an install without the `edge` extra.
`edge.db` re-exports them; the service settings and `xscreen admin` both default to them, so a plain
`xscreen serve` and a plain `xscreen admin add-station` talk to the same database.
"""

from __future__ import annotations

from pathlib import Path

#: Environment variable that overrides the database URL (service settings and `xscreen admin`).
DB_URL_ENV = "XSCREEN_DB_URL"
#: Environment variable that overrides the data directory (image files).
DATA_DIR_ENV = "XSCREEN_DATA_DIR"

#: Where scan images (content-addressed files) and, by default, the SQLite database live.
DEFAULT_DATA_DIR = Path("./xscreen-data")
#: One SQLite file next to the images: enough for one lane box; use PostgreSQL to share between processes
#: on several hosts.
DEFAULT_DB_URL = "sqlite:///./xscreen-data/xscreen.db"
