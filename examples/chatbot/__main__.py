"""Runs the example chatbot with Werkzeug's threaded server: ``python -m examples.chatbot``."""

from __future__ import annotations

import argparse

from .app import create_app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m examples.chatbot", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=5055, help="port to listen on (default 5055)")
    args = parser.parse_args(argv)
    create_app().run(host=args.host, port=args.port, threaded=True, debug=False, use_reloader=False)


if __name__ == "__main__":
    main()
