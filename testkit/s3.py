"""A moto S3 server on loopback (what s3fs's own tests use), restartable to simulate an outage."""

from __future__ import annotations

import logging
import threading
import time

from serve_app.run import free_port


class RestartableS3:
    """A moto S3 server on one fixed loopback port that can be stopped and started again.

    moto keeps its buckets in process memory, so objects survive a restart, as they survive
    a real endpoint's outage; while it is stopped, connections are refused.
    """

    def __init__(self) -> None:
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._server = None

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def outage(self, seconds: float) -> threading.Thread:
        """Stop now and start again after ``seconds`` (in a background thread, returned)."""
        self.stop()
        thread = threading.Thread(target=lambda: (time.sleep(seconds), self.start()), daemon=True)
        thread.start()
        return thread
