"""Server-sent events: bytes in, events out, by the WHATWG EventSource parsing rules.

The parser is incremental: bytes may arrive split anywhere, inside a UTF-8 character or
between the CR and LF of a line ending. A leading byte-order mark is dropped, invalid UTF-8
becomes U+FFFD, lines end at CRLF, LF or CR, `:` lines are comments, a field without a
colon has an empty value, and one space after the colon is stripped. `event` and `data`
are the only fields kept (`id` and `retry` steer reconnection, which a recorded exchange
never does). One deliberate departure from the standard: `close()` dispatches a final
event that lacks its closing blank line, so a stream cut short still yields what it sent.
"""

import codecs
from typing import NamedTuple


class SSEEvent(NamedTuple):
    event: str
    data: str


class SSEParser:
    """Feed bytes as they come; each call returns the events completed by those bytes."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8-sig")(errors="replace")
        self._line = ""  # text after the last line ending seen
        self._skip_lf = False  # the last text ended in CR: a leading LF completes that CRLF
        self._event = ""
        self._data: list[str] = []

    def feed(self, data: bytes) -> list[SSEEvent]:
        return self._lines(self._decoder.decode(data))

    def close(self) -> list[SSEEvent]:
        """End of stream: flush the last line and dispatch a pending event."""
        events = self._lines(self._decoder.decode(b"", final=True))
        last = [self._line, ""] if self._line else [""]
        self._line = ""
        return events + self._dispatch_lines(last)

    def _lines(self, text: str) -> list[SSEEvent]:
        if not text:
            return []
        if self._skip_lf and text[0] == "\n":
            text = text[1:]
        self._skip_lf = text.endswith("\r")
        text = self._line + text
        if "\r" in text:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        lines = text.split("\n")
        self._line = lines.pop()
        return self._dispatch_lines(lines)

    def _dispatch_lines(self, lines: list[str]) -> list[SSEEvent]:
        events = []
        event, data = self._event, self._data
        for line in lines:
            if not line:
                if data:
                    events.append(SSEEvent(event or "message", "\n".join(data)))
                event, data = "", []
            elif line[0] != ":":  # not a comment
                name, _, value = line.partition(":")
                if value[:1] == " ":
                    value = value[1:]
                if name == "data":
                    data.append(value)
                elif name == "event":
                    event = value
        self._event, self._data = event, data
        return events


def parse_sse(body: bytes) -> list[SSEEvent]:
    """Every event in a complete body, the last one included even without a blank line."""
    parser = SSEParser()
    return parser.feed(body) + parser.close()
