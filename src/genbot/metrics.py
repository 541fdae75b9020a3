"""Prometheus metrics of a bot: what its chats, its model and its Discord connection are doing.

Every :class:`genbot.Genbot` has a :class:`Metrics` (``bot.metrics``) with a registry of its own,
so that several bots in one process never share or clash. The ready-made chat bot feeds it as
chats wait for a model slot, generate and end; every bot feeds it its Discord REST requests (by
method and route template) and, at scrape time, its gateway latency. With ``metrics_port`` set
(``genbot run``: the ``metrics_port`` setting) the bot serves them at
``http://<metrics_host>:<metrics_port>/metrics`` while it runs.

Labels stay bounded: a model is labelled by the name the config gives it (see
:func:`model_name`), a REST request by its method and route template (``POST
/channels/{channel_id}/messages``), an error by its kind (:data:`ERROR_KINDS`), a shard by its
number; never a user, channel, server or message id.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import math
import time
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar

import aiohttp
import discord
from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from genbot.streaming import StreamError

if TYPE_CHECKING:
    pass

__all__ = [
    "ERROR_KINDS",
    "Metrics",
    "MetricsError",
    "ObservedStream",
    "error_kind",
    "gateway_latencies",
    "model_name",
]

_log = logging.getLogger(__name__)


class ModelStream(Protocol):
    """What a chat holds while it has a model slot: send inputs, read outputs, close."""

    def __call__(self, inputs: object) -> AsyncIterable[Any]: ...

    def close(self) -> None: ...


T = TypeVar("T")

#: The kinds of ``genbot_errors_total``: the model failed (``backend``), sent no text for
#: ``stall_timeout`` (``stall``), had no free slot within ``queue_timeout``
#: (``queue_timeout``), a Discord request of a reply failed (``discord``), anything else
#: (``other``).
ERROR_KINDS: Final = ("backend", "stall", "queue_timeout", "discord", "other")
#: The route label of a REST request discord.py makes without a route (the gateway's socket).
OTHER_ROUTE: Final = "other"

#: Seconds: the buckets of the time to first token (a wait for a slot included).
TTFT_BUCKETS: Final = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0, 300.0)
#: Seconds: the buckets of a reply's duration.
DURATION_BUCKETS: Final = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0)

#: The REST request being made in this task: (method, route template).
_ROUTE: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar(
    "genbot_metrics_route", default=None
)


class MetricsError(RuntimeError):
    """The metrics endpoint could not be served (e.g. its port is taken)."""


def model_name(backend: str, model: str) -> str:
    """The ``model`` label of a model the config defines: its ``model`` setting, or
    ``<backend>:default`` when that is empty (the embedded model, the server's first one).

    Parameters
    ----------
    backend, model:
        The ``backend`` and ``model`` settings.
    """
    return model or f"{backend}:default"


def error_kind(error: BaseException, backend_failed: bool = False) -> str:
    """Which of :data:`ERROR_KINDS` a failed reply counts as.

    Parameters
    ----------
    error:
        What the reply raised.
    backend_failed:
        The model's stream itself raised (whatever the reply raised then).
    """
    if backend_failed or isinstance(error, StreamError):
        return "backend"
    if isinstance(error, (asyncio.TimeoutError, TimeoutError)):
        return "stall"
    if isinstance(error, (discord.DiscordException, aiohttp.ClientError, OSError)):
        return "discord"
    return "other"


def gateway_latencies(client: discord.Client) -> list[tuple[int, float]]:
    """(shard id, seconds) of each gateway connection that has measured its latency.

    Parameters
    ----------
    client:
        An :class:`discord.AutoShardedClient` (each of its shards) or a plain client (its one
        shard, ``0`` unless it was given a ``shard_id``).
    """
    if isinstance(client, discord.AutoShardedClient):
        pairs = list(client.latencies)
    else:
        pairs = [(client.shard_id or 0, client.latency)]
    return [(shard, seconds) for shard, seconds in pairs if math.isfinite(seconds)]


class _Latencies(Collector):
    """``genbot_gateway_latency_seconds``, read from the client at scrape time."""

    def __init__(self) -> None:
        self.source: Callable[[], Iterable[tuple[int, float]]] = list

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "genbot_gateway_latency_seconds",
            "Time between the last heartbeat sent to the Discord gateway and its acknowledgement.",
            labels=["shard"],
        )
        for shard, seconds in self.source():
            family.add_metric([str(shard)], seconds)
        yield family


class Metrics:
    """The Prometheus metrics of one bot, in a registry of its own (:attr:`registry`).

    The chat hooks (:meth:`serving`, :meth:`wait_for_slot` and the :class:`ObservedStream` it
    returns) are what the ready-made chat bot calls; :meth:`watch` counts a client's REST
    requests and reads its gateway latency; :meth:`start` serves the metrics over HTTP.

    Parameters
    ----------
    port:
        The TCP port :meth:`start` serves on; ``0``: none (the metrics are still kept).
    host:
        The address it listens on (``127.0.0.1``: this machine only).

    Raises
    ------
    ValueError
        A port that is not 0 to 65535, or an empty host.
    """

    def __init__(self, *, port: int = 0, host: str = "127.0.0.1") -> None:
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"metrics port must be 0 (off) to 65535, got {port!r}")
        if not host:
            raise ValueError("metrics host must not be empty")
        self.port = port
        self.host = host
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.waiting = Gauge(
            "genbot_chats_waiting",
            "Chats waiting for a free model slot.",
            ["model"],
            registry=registry,
        )
        self.running = Gauge(
            "genbot_chats_running",
            "Chats holding a model slot (generating): the model's busy slots.",
            ["model"],
            registry=registry,
        )
        self.slots = Gauge(
            "genbot_model_slots",
            "Chats the model generates for at once (the parallel setting).",
            ["model"],
            registry=registry,
        )
        self.tokens = Counter(
            "genbot_tokens_generated",
            "Pieces of text the model streamed: one per token for llamacpp and transformers.",
            ["model"],
            registry=registry,
        )
        self.characters = Counter(
            "genbot_characters_generated",
            "Characters the model generated.",
            ["model"],
            registry=registry,
        )
        self.first_token = Histogram(
            "genbot_time_to_first_token_seconds",
            "From asking for a model slot to the first text of the reply.",
            ["model"],
            buckets=TTFT_BUCKETS,
            registry=registry,
        )
        self.duration = Histogram(
            "genbot_reply_duration_seconds",
            "From getting a model slot to the end of the reply.",
            ["model"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.requests = Counter(
            "genbot_discord_requests",
            "Discord REST requests answered, retries included, by method and route template.",
            ["method", "route"],
            registry=registry,
        )
        self.rate_limited = Counter(
            "genbot_discord_rate_limited",
            "Discord REST requests answered 429 Too Many Requests.",
            ["method", "route"],
            registry=registry,
        )
        self.errors = Counter(
            "genbot_errors", "Chats that ended in an error, by kind.", ["kind"], registry=registry
        )
        for kind in ERROR_KINDS:
            self.errors.labels(kind)
        # -- tools (issue 11) --
        self.tool_calls = Counter(
            "genbot_tool_calls",
            "Tool calls the model made, by tool and outcome (ok, error, timeout, invalid, "
            "unknown); a tool the chat was not offered counts as '(unknown)'.",
            ["tool", "outcome"],
            registry=registry,
        )
        self._latencies = _Latencies()
        registry.register(self._latencies)
        self._models: dict[int, str] = {}
        self._runner: web.AppRunner | None = None

    # -- the model's chats -------------------------------------------------------------------

    def serving(self, backend: object, model: str, slots: int, *, only: bool = True) -> None:
        """New chats go to `backend`, the model labelled `model`, with `slots` slots.

        Parameters
        ----------
        backend:
            The model's Streamer (chats name it to :meth:`wait_for_slot`).
        model:
            Its label (:func:`model_name`).
        slots:
            How many chats it generates for at once; other models' slots are dropped.
        only:
            ``False``: one more model beside the others (named models), whose slots stay.
        """
        self._models[id(backend)] = model
        for other in _models(self.slots) - {model} if only else ():
            self.slots.remove(other)
        self.slots.labels(model).set(slots)

    def model_of(self, backend: object) -> str:
        """The label of `backend` given to :meth:`serving` (else its class name)."""
        return self._models.get(id(backend), type(backend).__name__)

    async def wait_for_slot(
        self, backend: object, waiting: Awaitable[tuple[ModelStream | None, T]]
    ) -> tuple[ObservedStream | None, T]:
        """Count a chat as waiting for a slot of `backend` while `waiting` runs.

        Parameters
        ----------
        backend:
            The model's Streamer.
        waiting:
            Gets the slot: returns the stream (``None`` when no slot came in time: a
            ``queue_timeout`` error) and anything else, passed on.

        Returns the stream, observed (running until closed), and what came with it.

        Raises
        ------
        Exception
            What `waiting` raised (a :class:`genbot.StreamError` counts as a ``backend`` error).
        """
        model = self.model_of(backend)
        asked = time.perf_counter()
        self.waiting.labels(model).inc()
        try:
            stream, other = await waiting
        except StreamError:
            self.error("backend")
            raise
        finally:
            self.waiting.labels(model).dec()
        if stream is None:
            self.error("queue_timeout")
            return None, other
        return ObservedStream(self, model, stream, asked), other

    def tool_call(self, tool: str, outcome: str) -> None:
        """Count a tool call of `tool` that came to `outcome` (tools, issue 11).

        Parameters
        ----------
        tool:
            The tool's name: one of the bot's tools, or ``(unknown)``, so the labels stay
            bounded.
        outcome:
            ``ok``, ``error``, ``timeout``, ``invalid`` or ``unknown``.
        """
        self.tool_calls.labels(tool, outcome).inc()

    def error(self, kind: str) -> None:
        """Count an error of `kind`, one of :data:`ERROR_KINDS` (another counts as ``other``).

        Parameters
        ----------
        kind:
            The kind of error.
        """
        self.errors.labels(kind if kind in ERROR_KINDS else "other").inc()

    # -- Discord -----------------------------------------------------------------------------

    def watch(self, client: discord.Client) -> None:
        """Count `client`'s REST requests and 429s by route, and read its gateway latency when
        scraped. Call it once, before the client logs in.

        Parameters
        ----------
        client:
            The bot; an ``http_trace`` it was given keeps working (these metrics join it).
        """
        http = client.http
        trace = http.http_trace or aiohttp.TraceConfig()
        try:
            trace.on_request_end.append(self._answered)
        except RuntimeError:  # a trace config already used by a session is frozen
            _log.warning("the client's http_trace is in use already: REST requests not counted")
            return
        http.http_trace = trace
        request = http.request

        @functools.wraps(request)
        async def with_route(route: discord.http.Route, **kwargs: Any) -> Any:
            token = _ROUTE.set((route.method, route.path))
            try:
                return await request(route, **kwargs)
            finally:
                _ROUTE.reset(token)

        http.request = with_route  # type: ignore[method-assign]
        self._latencies.source = functools.partial(gateway_latencies, client)

    async def _answered(
        self, _: aiohttp.ClientSession, __: Any, params: aiohttp.TraceRequestEndParams
    ) -> None:
        method, route = _ROUTE.get() or (params.method, OTHER_ROUTE)
        self.requests.labels(method, route).inc()
        if params.response.status == 429:
            self.rate_limited.labels(method, route).inc()

    # -- serving -----------------------------------------------------------------------------

    def render(self) -> bytes:
        """The metrics in Prometheus' text format, as the endpoint serves them."""
        return generate_latest(self.registry)

    @property
    def url(self) -> str | None:
        """Where the metrics are served (``http://host:port/metrics``), ``None`` when not."""
        if self._runner is None:
            return None
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    async def start(self) -> None:
        """Serve the metrics on ``http://host:port/metrics`` (nothing when the port is 0, or
        already serving).

        Raises
        ------
        MetricsError
            The address cannot be listened on (the port is taken, the host is not this
            machine's).
        """
        if not self.port or self._runner is not None:
            return
        app = web.Application()
        app.router.add_get("/metrics", self._scrape)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.port).start()
        except OSError as error:
            await runner.cleanup()
            raise MetricsError(
                f"cannot serve metrics on {self.host}:{self.port} (setting 'metrics_port'): "
                f"{error.strerror or error}"
            ) from error
        self._runner = runner
        _log.info("serving metrics on %s", self.url)

    async def stop(self) -> None:
        """Stop serving the metrics (the counts are kept); never raises."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        try:
            await runner.cleanup()
        except Exception:
            _log.exception("stopping the metrics endpoint failed")

    async def _scrape(self, _: web.Request) -> web.Response:
        return web.Response(body=self.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})


class ObservedStream:
    """A model stream holding a slot, counted as running until :meth:`close`; the text it
    streams is counted (tokens, characters, time to first token).

    Parameters
    ----------
    metrics:
        Where to count.
    model:
        The model's label.
    stream:
        The stream (a :class:`genbot.streaming.CallerStream`, or a wrapper such as a
        :class:`genbot.fairness.FairStream`).
    asked:
        When the chat asked for the slot (``time.perf_counter()``).
    """

    def __init__(self, metrics: Metrics, model: str, stream: ModelStream, asked: float) -> None:
        self._metrics = metrics
        self._model = model
        self._stream = stream
        #: The stream observed, for what else it counts (e.g. a fair turn's deltas).
        self.inner = stream
        self._asked = asked
        self._granted = time.perf_counter()
        self._replied = False
        self._first = True
        self._closed = False
        self.backend_failed = False
        # The label lookups, once per reply rather than per piece of text.
        self._tokens = metrics.tokens.labels(model)
        self._characters = metrics.characters.labels(model)
        metrics.running.labels(model).inc()

    def __call__(self, inputs: object) -> _Deltas:
        """Send `inputs` to the model; returns its outputs, counted."""
        self._replied = True
        return _Deltas(self, aiter(self._stream(inputs)))

    def _delta(self, delta: object) -> None:
        if self._first:
            self._first = False
            elapsed = time.perf_counter() - self._asked
            self._metrics.first_token.labels(self._model).observe(elapsed)
        self._tokens.inc()
        if isinstance(delta, str):
            self._characters.inc(len(delta))

    def failed(self, error: BaseException) -> None:
        """The reply ended with `error`: count it (see :func:`error_kind`).

        Parameters
        ----------
        error:
            What the reply raised.
        """
        self._metrics.error(error_kind(error, self.backend_failed))

    def close(self) -> None:
        """Close the stream (freeing the slot) and stop counting it as running; idempotent."""
        self._stream.close()
        if self._closed:
            return
        self._closed = True
        self._metrics.running.labels(self._model).dec()
        if self._replied:
            elapsed = time.perf_counter() - self._granted
            self._metrics.duration.labels(self._model).observe(elapsed)


class _Deltas:
    """The outputs of an observed stream, counted as they come."""

    def __init__(self, observed: ObservedStream, outputs: Any) -> None:
        self._observed = observed
        self._outputs = outputs

    def __aiter__(self) -> _Deltas:
        return self

    async def __anext__(self) -> Any:
        try:
            delta = await self._outputs.__anext__()
        except StopAsyncIteration:
            raise
        except Exception:
            self._observed.backend_failed = True
            raise
        self._observed._delta(delta)
        return delta


def _models(gauge: Gauge) -> set[str]:
    """The ``model`` label of every series `gauge` has."""
    return {sample.labels["model"] for family in gauge.collect() for sample in family.samples}
