"""HTTP/1.x spoken byte by byte over one TCP connection: what HTTP libraries will not send
(huge or trickled heads, HTTP/1.0, an `Upgrade` they ignore), and answers read as they come."""

from __future__ import annotations

import select
import socket
import time
from dataclasses import dataclass, field


@dataclass
class RawResponse:
    """One answer as it came over the wire."""

    status: int
    head: bytes
    """The status line and headers, as sent."""
    headers: dict[str, str] = field(default_factory=dict)
    """Lower-case names; a repeated header keeps its last value."""
    body: bytes = b""
    """De-chunked when the answer was chunked."""


class RawConnection:
    """A client connection to 127.0.0.1:`port`."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.timeout = timeout
        self._buffer = b""
        self.closed_by_server = False

    def send(self, data: bytes) -> bool:
        """Send `data` whole; False if the server has closed the connection."""
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            return False
        return True

    def readable(self, timeout: float) -> bool:
        """Wait up to `timeout` for the server to send something (or to close)."""
        return bool(select.select([self.sock], [], [], timeout)[0])

    def _fill(self, deadline: float) -> bool:
        """Read what the server sent, waiting until `deadline`; False at its end of stream."""
        self.sock.settimeout(max(0.001, deadline - time.monotonic()))
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            self.closed_by_server = True
            return False
        self._buffer += data
        return True

    def read_response(self) -> RawResponse:
        """The next answer, framed by Content-Length, chunked, or by the connection's close."""
        deadline = time.monotonic() + self.timeout
        while b"\r\n\r\n" not in self._buffer:
            if not self._fill(deadline):
                raise ConnectionError(f"closed before an answer's head: {self._buffer[:200]!r}")
        head, self._buffer = self._buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        response = RawResponse(status=int(lines[0].split(" ")[1]), head=head)
        for line in lines[1:]:
            name, _, value = line.partition(":")
            response.headers[name.strip().lower()] = value.strip()
        if "content-length" in response.headers:
            size = int(response.headers["content-length"])
            while len(self._buffer) < size and self._fill(deadline):
                pass
            response.body, self._buffer = self._buffer[:size], self._buffer[size:]
        elif response.headers.get("transfer-encoding") == "chunked":
            response.body = self._dechunk(deadline)
        else:
            while self._fill(deadline):
                pass
            response.body, self._buffer = self._buffer, b""
        return response

    def _dechunk(self, deadline: float) -> bytes:
        body = b""
        while True:
            while b"\r\n" not in self._buffer:
                if not self._fill(deadline):
                    raise ConnectionError("closed inside a chunked body")
            size_line, self._buffer = self._buffer.split(b"\r\n", 1)
            size = int(size_line.split(b";")[0], 16)
            while len(self._buffer) < size + 2:
                if not self._fill(deadline):
                    raise ConnectionError("closed inside a chunk")
            body += self._buffer[:size]
            self._buffer = self._buffer[size + 2 :]
            if size == 0:
                return body

    def wait_closed(self, timeout: float) -> bool:
        """Whether the server closes the connection within `timeout` (what it sends meanwhile
        is kept for `read_response`)."""
        deadline = time.monotonic() + timeout
        try:
            while self._fill(deadline):
                pass
        except TimeoutError:
            return False
        return True

    def close(self) -> None:
        self.sock.close()
