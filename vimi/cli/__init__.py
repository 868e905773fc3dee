"""The `vimi` command line: every pipeline step is a subcommand. The commands live by area (data,
train, models, bench, project) over the shared app of `common`; importing this package registers them all."""

from __future__ import annotations

import sys

import typer
from rich.markup import escape

from vimi.cli import bench, data, models, project, train  # noqa: F401  (they register their commands)
from vimi.cli.common import app, err_console
from vimi.errors import VimiError

__all__ = ["app", "main"]


def main() -> None:
    """Entry point: user errors print one clear line, not a traceback."""
    try:
        code = app(standalone_mode=False)  # returns the exit code of typer.Exit
    except VimiError as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except (KeyboardInterrupt, typer.Abort):
        err_console.print("interrupted; nothing was committed by the step in progress.")
        sys.exit(130)
    except typer.TyperException as exc:  # usage errors: unknown option, missing argument, ...
        show = getattr(exc, "show", None)
        if show is None:
            raise
        show()
        sys.exit(getattr(exc, "exit_code", 2))
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
