"""multipart/form-data, read and written, for the audio and image-edit uploads.

Uploads arrive bounded by the request size limit; they are parsed once (so the model
can be swapped for the deployment's) and re-encoded for the provider.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from email.parser import BytesParser
from email.policy import HTTP

from tallygate.errors import BadRequestError


@dataclass(frozen=True, slots=True)
class FilePart:
    filename: str
    data: bytes
    content_type: str = "application/octet-stream"


FormValue = str | FilePart


def parse_form(body: bytes, content_type: str) -> list[tuple[str, FormValue]]:
    """The fields of a multipart/form-data body, in order; a malformed body is a 400."""
    if not content_type.lower().startswith("multipart/form-data") or "boundary=" not in (
            content_type.lower()):
        raise BadRequestError("this route takes multipart/form-data with a boundary "
                              f"(got Content-Type {content_type or 'none'!r})",
                              code="invalid_multipart")
    message = BytesParser(policy=HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body)
    if not message.is_multipart() or message.defects:
        raise BadRequestError("the multipart/form-data body is malformed",
                              code="invalid_multipart")
    fields: list[tuple[str, FormValue]] = []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str) or not name:
            raise BadRequestError("a multipart part has no name", code="invalid_multipart")
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        filename = part.get_filename()
        if filename is not None:
            fields.append((name, FilePart(filename, data, part.get_content_type())))
        else:
            fields.append((name, data.decode("utf-8", errors="replace")))
    return fields


def encode_form(fields: list[tuple[str, FormValue]]) -> tuple[bytes, str]:
    """A multipart/form-data body and its Content-Type."""
    boundary = "tallygate-" + os.urandom(12).hex()
    out = bytearray()
    for name, value in fields:
        out += f"--{boundary}\r\n".encode()
        if isinstance(value, FilePart):
            safe = value.filename.replace('"', "%22").replace("\r", "").replace("\n", "")
            out += (f'Content-Disposition: form-data; name="{name}"; filename="{safe}"\r\n'
                    f"Content-Type: {value.content_type}\r\n\r\n").encode()
            out += value.data
        else:
            out += f'Content-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
            out += value.encode()
        out += b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"
