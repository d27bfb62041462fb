"""A uvicorn server on a background thread, bound to a free loopback port (tests, load test)."""

from __future__ import annotations

import socket
import threading
import time

import uvicorn


class ThreadedServer:
    """`with ThreadedServer(app) as srv:` serves `app` at `srv.url` until the block ends."""

    def __init__(self, app, host: str = "127.0.0.1", log_level: str = "warning", start_timeout_s: float = 60.0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       name="anyprec-uvicorn", daemon=True)
        self.start_timeout_s = start_timeout_s

    def __enter__(self) -> "ThreadedServer":
        self.thread.start()
        deadline = time.monotonic() + self.start_timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start on {self.url}")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()
