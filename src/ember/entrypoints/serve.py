"""`ember serve`: build the app, run uvicorn, stop gracefully on SIGTERM/SIGINT with exit code 0."""

from __future__ import annotations

import argparse
import logging
import signal
from types import FrameType

import uvicorn

from ember.config import EngineConfig
from ember.entrypoints.server.app import create_app
from ember.entrypoints.server.state import ServerSettings

logger = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    """uvicorn re-raises a caught SIGTERM after its graceful shutdown, which would end the process
    with a signal status; a stop request that shut down cleanly exits 0 here instead."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        else:
            self.should_exit = True


def serve(args: argparse.Namespace) -> int:
    """Run until stopped; 0 after a graceful stop, 1 if the engine could not start."""
    from ember.entrypoints.cli import engine_kwargs

    api_key = args.api_key
    kwargs = engine_kwargs(args)
    kwargs["max_waiting_requests"] = args.max_waiting_requests
    config = EngineConfig.from_kwargs(**kwargs)
    settings = ServerSettings(host=args.host, port=args.port, api_key=api_key,
                              served_model_name=args.served_model_name, max_body_bytes=args.max_body_bytes)
    server: _Server | None = None

    def stop_on_failure(exc: BaseException) -> None:
        if server is not None:
            server.should_exit = True

    app = create_app(config, settings, on_engine_failed=stop_on_failure)
    uv_config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                               timeout_graceful_shutdown=60, access_log=args.log_level == "debug")
    server = _Server(uv_config)
    logger.info("ember serve: %s on %s (api key %s)", config.model_config.model, settings.url,
                "required" if api_key else "off")
    server.run()
    engine = app.state.ember.engine
    if engine.startup_error is not None:
        logger.error("the engine failed to start: %s", engine.startup_error)
        return 1
    return 0
