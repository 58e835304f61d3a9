"""The `xscreen` command. Each package adds its own subcommands from its `cli.py` (`register(app)`);
those modules import only typer at load time, so `xscreen --help` is fast and works on a lane box that
has no torch. Heavy imports happen inside each command.

The root lives in `vision/` because vision is the one package every install has.
"""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="xscreen",
    help="Find concealed contraband in baggage X-ray scans: data, synthesis, training, export, lane service.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)



@app.callback()
def _root() -> None:
    """Find concealed contraband in baggage X-ray scans: data, synthesis, training, export, lane service."""


#: Packages whose `cli.register(app)` adds subcommands, in help order.
_COMMAND_MODULES = (
    "datasets.cli",
    "datasets.synth.cli",
    "training.cli",
    "training.export_cli",
    "inference.cli",
    "edge.cli",
    "edge.admin_cli",
    "vision.demo",
)


def _register_all() -> None:
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # that package has no commands yet
                continue
            raise
        module.register(app)


_register_all()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
