"""The HTTP port: uvicorn (HTTP/1.1, httptools) serving the REST routes on the server's event loop, beside
gRPC. A request that waits holds no thread, as on gRPC."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import TYPE_CHECKING

import uvicorn

from ...config.server import ServerConfig, connections_per_port
from ...dataplane.dataplane import DataPlane
from ...jobs.service import JobService
from ...security.tokens import TokenStore
from .bounds import bounded_protocol
from .routes import HttpApi
from .security import TokenCheck

if TYPE_CHECKING:
    from ...scheduling.loop import EventLoopThread

log = logging.getLogger(__name__)


class HttpTransport:
    """:meth:`bind`, :meth:`start`, :meth:`stop` are called from any thread but the loop's; they run on
    ``loop``. ``jobs``: the job service the ``/v1/jobs`` routes serve (None: they answer 501)."""

    def __init__(self, config: ServerConfig, dataplane: DataPlane, loop: EventLoopThread,
                 jobs: JobService | None = None) -> None:
        self.config = config
        self.dataplane = dataplane
        self.loop = loop
        tokens = TokenStore(config.auth_token_file) if config.auth_token_file is not None else None
        self.api = HttpApi(dataplane, min(config.max_message_bytes, config.http_max_input_bytes),
                           TokenCheck(tokens, config.auth_open), jobs)
        self.server: uvicorn.Server | None = None
        self._socket: socket.socket | None = None
        self._task: asyncio.Task[None] | None = None
        self.port: int | None = None

    def bind(self) -> int:
        """Bind the port (0 picks one) and return it; requests are taken once :meth:`start` runs. Raises
        OSError when the address cannot be bound."""
        cfg = self.config
        family = socket.AF_INET6 if ":" in cfg.host else socket.AF_INET
        # proto IPPROTO_TCP, not 0 (socket.create_server's): asyncio turns Nagle off (TCP_NODELAY) only on
        # sockets that say they are TCP, and without that a response written as headers then body waits
        # for the client's delayed ACK, 40 ms a request.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((cfg.host, cfg.http_port or 0))
            sock.listen(1024)
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        self._socket = sock
        self.port = int(sock.getsockname()[1])
        if cfg.host not in ("127.0.0.1", "localhost", "::1"):
            log.warning("HTTP on %s:%d is plain text%s", cfg.host, self.port,
                        "" if cfg.auth_token_file else " and needs no token")
        return self.port

    def start(self) -> None:
        assert self._socket is not None
        self.protocol = bounded_protocol(connections_per_port(self.config))
        config = uvicorn.Config(self.api.app(), http=self.protocol, ws="none", lifespan="off", log_config=None,
                                log_level="warning",
                                access_log=False, server_header=False, timeout_keep_alive=30,
                                timeout_graceful_shutdown=self.config.shutdown_grace_s)
        self.server = uvicorn.Server(config)
        sockets = [self._socket]

        async def begin() -> None:
            assert self.server is not None
            self._task = asyncio.get_running_loop().create_task(self.server.serve(sockets=sockets))
            while not self.server.started and not self._task.done():
                await asyncio.sleep(0.005)
            if self._task.done():
                self._task.result()  # startup failed: raise why

        self.loop.run(begin())

    def drain(self, grace: float) -> None:
        """Shutdown begins: stop taking requests (the listening socket closes, idle connections too); running
        ones have ``grace`` seconds to finish."""
        server = self.server
        if server is None:
            return

        def begin() -> None:
            server.config.timeout_graceful_shutdown = grace
            server.should_exit = True

        self.loop.loop.call_soon_threadsafe(begin)

    def stop(self, grace: float) -> None:
        """Wait for the requests still running to finish (at most ``grace`` seconds after :meth:`drain`, which
        this calls if it was not), then cancel what is left."""
        server, task = self.server, self._task
        if server is None or task is None:
            return
        if not server.should_exit:
            self.drain(grace)

        async def end() -> None:
            await asyncio.wait_for(asyncio.shield(task), grace + 5)

        try:
            self.loop.run(end())
        except (TimeoutError, asyncio.CancelledError):
            log.warning("HTTP requests still running after %.1f s of shutdown grace were dropped", grace)
        self.server = self._task = None

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
