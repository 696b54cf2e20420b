"""Ray Serve: Ember's HTTP server (every OpenAI/Cohere/Jina route) as replicas of a deployment.

    from ray import serve
    serve.run(ember.ray.deployment("sentence-transformers/all-MiniLM-L6-v2", autoscale=(1, 8)))

- Ready when warm: a replica's startup returns only after its engine is compiled and warmed and
  its HTTP path has run once, so Serve routes no request to a cold replica (Serve marks a
  replica running when its constructor and the app's startup return).
- Health: Serve's periodic check_health fails when the engine thread died, and Serve replaces
  the replica.
- Autoscaling on queue depth: with `autoscale=(min, max)`, Serve adds replicas when the requests
  waiting or running per replica pass `target_ongoing_requests` (Serve's own autoscaler).
- Drain on scale-down: Serve stops routing to a replica it removes, waits for its requests in
  flight (up to `graceful_shutdown_timeout_s`), then the app's shutdown finishes the engine's
  queue before it stops.
- Threads: each replica runs as many intra-op threads as the CPUs it reserves.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from ember.config import EngineConfig, ServerConfig
from ember.entrypoints.ray_data import actor_config
from ember.errors import InvalidRequestError

logger = logging.getLogger(__name__)


class EmberReplica:
    """One replica: an AsyncEngine behind Ember's FastAPI app, started warm."""

    def __init__(self, config: EngineConfig, settings: ServerConfig, cpus: float) -> None:
        import ray

        from ember.entrypoints.server.app import create_app

        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", cpus)
        self.ember_app = create_app(actor_config(config, cpus), settings, start_when_warm=True)

    def __serve_build_asgi_app__(self) -> Any:
        """Serve's hook: the ASGI app, built in the replica by __init__."""
        return self.ember_app

    def check_health(self) -> None:
        engine = self.ember_app.state.ember.engine
        error = engine.dead_error or engine.startup_error
        if error is not None:
            raise RuntimeError(f"ember engine failed: {error}")


def deployment(model: str | EngineConfig | None = None, *, num_replicas: int = 1, autoscale: tuple[int, int] | None = None,
               target_ongoing_requests: float = 32, max_ongoing_requests: int = 256, cpus_per_replica: float = 1,
               graceful_shutdown_timeout_s: float = 60, name: str = "ember",
               server: ServerConfig | dict[str, Any] | None = None,
               **engine_kwargs: Any) -> Any:
    """A Ray Serve application serving `model`; pass it to serve.run().

    Args:
        model: a model folder or installed name (on every node), or a whole EngineConfig.
        num_replicas: a fixed number of replicas (ignored with `autoscale`).
        autoscale: (min, max) replicas, scaled on requests in flight per replica.
        target_ongoing_requests: the requests per replica the autoscaler aims for; an encoder
            batches the requests it holds, so it wants dozens, not Serve's default of 2.
        max_ongoing_requests: requests one replica holds at once; more wait in Serve's queue.
        cpus_per_replica: CPUs reserved per replica; its engine runs that many threads.
        server: ServerConfig fields (api_key, the request limits); host and port are Serve's.
        **engine_kwargs: any EngineConfig field.
    """
    try:
        from ray import serve
    except ImportError:
        raise InvalidRequestError("Ray Serve is not installed: pip install 'ember[ray]'", param="ray") from None
    config = model if isinstance(model, EngineConfig) else EngineConfig.from_kwargs(model, **engine_kwargs)
    settings = server if isinstance(server, ServerConfig) else ServerConfig(**(server or {}))
    settings.verify()
    settings = dataclasses.replace(settings, max_concurrent_requests=max(settings.max_concurrent_requests,
                                                                         max_ongoing_requests))
    options: dict[str, Any] = {
        "name": name, "max_ongoing_requests": max_ongoing_requests, "ray_actor_options": {"num_cpus": cpus_per_replica},
        "graceful_shutdown_timeout_s": graceful_shutdown_timeout_s, "health_check_period_s": 10,
    }
    if autoscale is not None:
        low, high = autoscale
        options["autoscaling_config"] = {"min_replicas": low, "initial_replicas": low, "max_replicas": high,
                                         "target_ongoing_requests": target_ongoing_requests}
    else:
        options["num_replicas"] = num_replicas
    replica = serve.deployment(serve.ingress()(EmberReplica), **options)
    return replica.bind(config, settings, cpus_per_replica)


def serve_on_ray(config: EngineConfig, settings: ServerConfig, *, replicas: int, max_replicas: int | None,
                 cpus_per_replica: float, address: str | None) -> int:
    """`ember serve --ray`: the deployment on a Ray cluster, HTTP on the configured host and port,
    until SIGTERM or SIGINT; then Serve drains the replicas and stops."""
    import signal
    import threading

    import ray
    from ray import serve

    if not ray.is_initialized():
        ray.init(address=address)
    serve.start(http_options={"host": settings.host, "port": settings.port})
    autoscale = (replicas, max_replicas) if max_replicas is not None else None
    app = deployment(config, num_replicas=replicas, autoscale=autoscale, cpus_per_replica=cpus_per_replica,
                     server=settings)
    serve.run(app, name="ember", route_prefix="/")
    logger.info("ready: serving %s on Ray Serve at %s (%s replicas)", config.model_config.model, settings.url,
                f"{replicas}..{max_replicas}" if max_replicas else replicas)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    logger.info("stopping: Serve drains the replicas")
    serve.shutdown()
    return 0
