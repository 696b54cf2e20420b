"""`ember serve`: build the app, run uvicorn, stop gracefully on SIGTERM/SIGINT with exit code 0.

A stop signal first drains: the server keeps listening, new requests get 503 + Retry-After (and
/health 503, so a load balancer moves traffic away), requests in flight finish; then uvicorn shuts
down and the process exits 0. A second signal skips the rest of the drain; a third SIGINT forces.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from types import FrameType

import uvicorn

from ember.config import EngineConfig, ServerConfig
from ember.entrypoints.server.admission import Admission
from ember.entrypoints.server.app import create_app

logger = logging.getLogger(__name__)

DRAIN_TIMEOUT_S = 60.0


class _Server(uvicorn.Server):
    """uvicorn re-raises a caught SIGTERM after its graceful shutdown, which would end the process
    with a signal status; a stop request that shut down cleanly exits 0 here instead."""

    def __init__(self, config: uvicorn.Config, admission: Admission) -> None:
        super().__init__(config)
        self.admission = admission
        self.drainer: threading.Thread | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        elif self.drainer is None and self.started:
            logger.info("%s: draining %d requests in flight; new requests get 503",
                        signal.Signals(sig).name, self.admission.num_in_flight)
            self.admission.start_draining()
            self.drainer = threading.Thread(target=self._exit_when_drained, name="ember-drain", daemon=True)
            self.drainer.start()
        else:
            self.should_exit = True

    def _exit_when_drained(self) -> None:
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while self.admission.num_in_flight and time.monotonic() < deadline and not self.should_exit:
            time.sleep(0.02)
        self.should_exit = True


def serve(config: EngineConfig, server_config: ServerConfig, log_level: str = "info") -> int:
    """Run until stopped; 0 after a graceful stop, 1 if the engine could not start."""
    server: _Server | None = None

    def stop_on_failure(exc: BaseException) -> None:
        if server is not None:
            server.should_exit = True

    app = create_app(config, server_config, on_engine_failed=stop_on_failure)
    uv_config = uvicorn.Config(app, host=server_config.host, port=server_config.port, log_level=log_level,
                               timeout_graceful_shutdown=60, access_log=log_level == "debug",
                               limit_concurrency=server_config.max_connections)
    server = _Server(uv_config, app.state.ember.admission)
    logger.info("ember serve: %s on %s (api key %s)", config.model_config.model, server_config.url,
                "required" if server_config.api_key else "off")
    server.run()
    engine = app.state.ember.engine
    if engine.startup_error is not None:
        logger.error("the engine failed to start: %s", engine.startup_error)
        return 1
    return 0
