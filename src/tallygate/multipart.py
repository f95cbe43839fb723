"""multipart/form-data uploads (audio files, images to edit): read into a bounded spool,
written to the provider as a stream.

An upload is never held whole in memory. The proxy reads the form part by part with
aiohttp's ``MultipartReader``, keeps the small text fields, and copies each file part
into one ``SpooledTemporaryFile`` (in memory up to ``SPOOL_MEMORY_BYTES``, on disk past
it), counting every byte received against the request size limit (413 past it, 400 for
a malformed form). The upstream body (``FormBody``) is written from the spool chunk by
chunk with its exact Content-Length, so every attempt of the call (a retry, a fallback,
a post again with fresh credentials) sends it whole from the start, which a body piped
straight from the client could not.

The whole form arrives before the call is routed: the fields that choose the route and
who pays (``model``, ``user``, ``metadata``) may follow the file (OpenAI's own curl
examples send ``-F file=@audio.mp3 -F model=whisper-1``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import cast

from aiohttp import BodyPartReader, MultipartReader, StreamReader, web
from aiohttp.http_exceptions import HttpProcessingError

from tallygate.errors import BadRequestError, RequestTimeoutError, RequestTooLargeError

log = logging.getLogger("tallygate.proxy")

# Up to this much of a call's files stays in memory; the rest goes to a temporary file.
SPOOL_MEMORY_BYTES = 512 * 1024
CHUNK_BYTES = 64 * 1024
# A text field (a prompt, a language code) is read into memory: it is bounded on its own.
TEXT_FIELD_BYTES = 1024 * 1024


class Spool:
    """The file parts of one call, one after another in one temporary file."""

    def __init__(self) -> None:
        self._file = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES)  # noqa: SIM115
        self.size = 0

    def append(self, data: bytes) -> None:
        # A page-cache write of one chunk takes microseconds: no thread hop for it.
        self._file.seek(self.size)
        self._file.write(data)
        self.size += len(data)

    def read(self, offset: int, size: int) -> Iterator[bytes]:
        end = offset + size
        while offset < end:
            self._file.seek(offset)
            chunk = self._file.read(min(CHUNK_BYTES, end - offset))
            if not chunk:
                raise RuntimeError("the upload spool ended early")
            offset += len(chunk)
            yield chunk

    def close(self) -> None:
        self._file.close()


@dataclass(frozen=True, slots=True)
class Spooled:
    """A file part's bytes: ``size`` bytes at ``offset`` of ``spool``."""

    spool: Spool
    offset: int
    size: int


@dataclass(frozen=True, slots=True)
class FilePart:
    filename: str
    data: bytes | Spooled  # bytes: the SDK's uploads, already in the caller's memory
    content_type: str = "application/octet-stream"

    @property
    def size(self) -> int:
        return len(self.data) if isinstance(self.data, bytes) else self.data.size

    def chunks(self) -> Iterator[bytes]:
        if isinstance(self.data, bytes):
            yield self.data
        else:
            yield from self.data.spool.read(self.data.offset, self.data.size)


FormValue = str | FilePart


@dataclass(frozen=True, slots=True)
class FormBody:
    """A multipart/form-data body to send: its framing and its parts, written in order
    each time ``chunks`` is iterated (``tallygate.providers.base.StreamedBody``)."""

    pieces: tuple[bytes | FilePart, ...]
    content_type: str

    @property
    def length(self) -> int:
        return sum(len(p) if isinstance(p, bytes) else p.size for p in self.pieces)

    async def chunks(self) -> AsyncIterator[bytes]:
        for piece in self.pieces:
            if isinstance(piece, bytes):
                yield piece
            else:
                for chunk in piece.chunks():
                    yield chunk

    def to_bytes(self) -> bytes:
        return b"".join(c for p in self.pieces
                        for c in ((p,) if isinstance(p, bytes) else p.chunks()))


def encode_form(fields: Sequence[tuple[str, FormValue]]) -> FormBody:
    """``fields`` as a multipart/form-data body (nothing is copied from the spool)."""
    boundary = "tallygate-" + os.urandom(12).hex()
    pieces: list[bytes | FilePart] = []
    for name, value in fields:
        safe_name = _quoted(name)
        if isinstance(value, FilePart):
            pieces.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{safe_name}"; '
                          f'filename="{_quoted(value.filename)}"\r\n'
                          f"Content-Type: {_header(value.content_type)}\r\n\r\n".encode())
            pieces.append(value)
            pieces.append(b"\r\n")
        else:
            pieces.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{safe_name}"'
                          f"\r\n\r\n{value}\r\n".encode())
    pieces.append(f"--{boundary}--\r\n".encode())
    return FormBody(tuple(pieces), f"multipart/form-data; boundary={boundary}")


def _quoted(value: str) -> str:
    return value.replace('"', "%22").replace("\r", "").replace("\n", "")


def _header(value: str) -> str:
    return value.replace("\r", "").replace("\n", "") or "application/octet-stream"


# --- reading a request's form ----------------------------------------------------------


def _malformed(detail: str = "") -> BadRequestError:
    return BadRequestError("the multipart/form-data body is malformed" + detail,
                           code="invalid_multipart")


async def read_form(request: web.Request, limit: int, timeout_s: float,
                    held: ExitStack) -> list[tuple[str, FormValue]]:
    """The fields of the request's multipart/form-data body, in order: file parts
    spooled (the spool closes with ``held``), text fields as strings. Over ``limit``
    bytes: a 413; malformed: a 400; not all there within ``timeout_s``: a 408."""
    ctype = request.headers.get("Content-Type", "")
    if not ctype.lower().startswith("multipart/form-data") or "boundary=" not in ctype.lower():
        raise BadRequestError("this route takes multipart/form-data with a boundary "
                              f"(got Content-Type {ctype[:100] or 'none'!r})",
                              code="invalid_multipart")
    if request.content_length is not None and request.content_length > limit:
        raise RequestTooLargeError(f"the request body is over the {limit}-byte limit")
    spool = Spool()
    held.callback(spool.close)
    try:
        async with asyncio.timeout(timeout_s):
            return await _read_parts(request, limit, spool)
    except TimeoutError:
        raise RequestTimeoutError(f"the request body did not arrive within {timeout_s:g}s"
                                  ) from None
    except (ValueError, AssertionError, RuntimeError, HttpProcessingError, UnicodeError):
        raise _malformed() from None  # aiohttp's reader says so with these
    except ConnectionError:
        # An ordinary event, not a gateway fault: nothing was admitted, so nothing is
        # held or billed; the answer goes nowhere.
        log.info("the client left before its upload ended")
        raise BadRequestError("the connection closed before the upload ended",
                              code="client_disconnected") from None


class _Bounded:
    """The request's body stream as aiohttp's multipart reader reads it, refusing to read
    past the size limit: every byte received counts, framing and preamble included, so a
    body with no Content-Length (or a false one) stops at most a read buffer past it.
    Bytes the reader hands back are kept here (StreamReader.unread_data is deprecated)."""

    def __init__(self, content: StreamReader, limit: int) -> None:
        self._content = content
        self._limit = limit
        self._back = b""

    def _check(self) -> None:
        if self._content.total_bytes > self._limit:
            raise RequestTooLargeError(f"the request body is over the {self._limit}-byte limit")

    async def read(self, n: int = -1) -> bytes:
        if self._back:
            data, self._back = (self._back, b"") if n < 0 else (self._back[:n], self._back[n:])
            return data
        data = await self._content.read(n)
        self._check()
        return data

    async def readline(self, *, max_line_length: int | None = None) -> bytes:
        head = b""
        if self._back:
            end = self._back.find(b"\n") + 1
            if end:
                head, self._back = self._back[:end], self._back[end:]
                return head
            head, self._back = self._back, b""
        data = await self._content.readline(max_line_length=max_line_length)
        self._check()
        return head + data

    def at_eof(self) -> bool:
        return not self._back and self._content.at_eof()

    def unread_data(self, data: bytes) -> None:
        self._back = data + self._back


async def _read_parts(request: web.Request, limit: int,
                      spool: Spool) -> list[tuple[str, FormValue]]:
    content = cast(StreamReader, _Bounded(request.content, limit))
    reader = MultipartReader(request.headers, content)
    fields: list[tuple[str, FormValue]] = []
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            raise _malformed(": a part is itself multipart")
        name = part.name
        if not name:
            raise BadRequestError("a multipart part has no name", code="invalid_multipart")
        encoding = part.headers.get("Content-Transfer-Encoding", "binary").lower()
        if encoding not in ("binary", "8bit", "7bit"):
            # Deprecated for forms (RFC 7578 4.7); its bytes would reach the provider
            # still encoded.
            raise _malformed(f": Content-Transfer-Encoding {encoding[:20]!r} is not taken")
        if part.filename is None:
            fields.append((name, await _text(part, name)))
            continue
        offset = spool.size
        while chunk := await part.read_chunk(CHUNK_BYTES):
            spool.append(chunk)
        ctype = part.headers.get("Content-Type") or "application/octet-stream"
        fields.append((name, FilePart(part.filename, Spooled(spool, offset, spool.size - offset),
                                      ctype)))
    if not reader.at_eof():
        raise _malformed(": it has no closing boundary")
    return fields


async def _text(part: BodyPartReader, name: str) -> str:
    data = bytearray()
    while chunk := await part.read_chunk(CHUNK_BYTES):
        data += chunk
        if len(data) > TEXT_FIELD_BYTES:
            raise BadRequestError(f"the form field {name[:64]!r} is over "
                                  f"{TEXT_FIELD_BYTES} bytes", param=name[:64],
                                  code="field_too_long")
    return data.decode("utf-8", errors="replace")
