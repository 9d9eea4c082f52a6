"""``maskserve serve``: arguments here; the app is built only when the command runs."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from maskserve.errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", type=Path, help="bundle directory (env MASKSERVE_BUNDLE; default: the demo model)")
    parser.add_argument("--host", help="interface to bind (env MASKSERVE_HOST; default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (env MASKSERVE_PORT; default 8000)")
    parser.epilog = "Every other setting is an environment variable MASKSERVE_<NAME>; see the README."


def main(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from maskserve.service.app import create_app
    from maskserve.service.backends import BackendError
    from maskserve.service.server import run
    from maskserve.service.settings import Settings

    overrides = {key: value for key in ("bundle", "host", "port") if (value := getattr(args, key)) is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"]) or "settings"
            problems.append(f"setting {where}: {error['msg']}")
        raise UsageError("; ".join(problems)) from None
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        app = create_app(settings)
    except BackendError as exc:  # nothing to run the bundle on: an installation problem
        raise UsageError(str(exc)) from None
    return run(app, app.state.server)
