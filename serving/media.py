"""Chat content parts -> pixels and waveforms, and generated pixels -> a PNG data URL.

Images come as `data:image/png;base64,...` or `data:image/jpeg;base64,...` URLs. A remote URL
is refused unless its host is on the allow-list the operator passed (`--allow-image-host`), so
the server never fetches whatever a caller points it at. An allowed host is fetched once, from
the address its name resolved to, and only if that address is public (loopback, private,
link-local and other special ranges are refused unless `--allow-private-image-addresses`);
a redirect is refused rather than followed (it could point anywhere), and the whole fetch has
one deadline and the same size limit as a request body. Audio comes as base64 WAV. Every
failure raises `BadInput` naming the part and what is wrong with it.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import http.client
import io
import ipaddress
import re
import socket
import ssl
import threading
import time
import urllib.parse

import numpy as np
from PIL import Image

from data import media

_DATA_URL = re.compile(r"data:(?P<mime>[\w/+.-]+)?(?P<params>(;[\w=.-]+)*?);base64,(?P<data>.*)", re.DOTALL)
IMAGE_TYPES = ("image/png", "image/jpeg", "image/jpg")
VIDEO_TYPES = {"image/gif": "gif", "video/mp4": "mp4", "video/webm": "webm"}  # -> FFmpeg's demuxer


class BadInput(ValueError):
    def __init__(self, message: str, param: str | None = None, code: str = "invalid_content"):
        super().__init__(message)
        self.param, self.code = param, code


@dataclasses.dataclass(frozen=True)
class FetchPolicy:
    """Where remote images may come from (serve.py's flags) and how long one fetch may take."""

    hosts: tuple[str, ...] = ()  # --allow-image-host
    private_addresses: bool = False  # --allow-private-image-addresses
    timeout_s: float = 10.0  # serve.fetch_timeout_s


def _b64(data: str, param: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as error:
        raise BadInput(f"{param}: not valid base64 ({error})", param) from None


def image_bytes(url: str, param: str, policy: FetchPolicy, max_bytes: int) -> bytes:
    """The encoded image a content part's URL names."""
    if url.startswith("data:"):
        match = _DATA_URL.fullmatch(url.strip())
        if not match:
            raise BadInput(f"{param}: a data URL must look like data:image/png;base64,<data>", param)
        if (match["mime"] or "").lower() not in IMAGE_TYPES:
            raise BadInput(f"{param}: unsupported image type {match['mime']!r}; send one of {IMAGE_TYPES}", param)
        return _b64(match["data"], param)
    try:
        parsed = urllib.parse.urlparse(url)
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
    except ValueError as error:
        raise BadInput(f"{param}: not a URL ({error})", param) from None
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise BadInput(f"{param}: expected a data: URL or an http(s) URL, got {url[:60]!r}", param)
    if parsed.hostname not in {host.lower() for host in policy.hosts}:
        raise BadInput(f"{param}: remote images are not fetched from {parsed.hostname!r} (the server's "
                       f"--allow-image-host list: {list(policy.hosts) or 'empty'}); send the image as a data: URL", param)
    try:
        return _fetch(parsed, port, policy, max_bytes)
    except BadInput as error:
        raise BadInput(f"{param}: could not fetch {url[:100]!r}: {error}", param) from None
    except (OSError, ValueError, http.client.HTTPException) as error:
        raise BadInput(f"{param}: could not fetch {url[:100]!r}: {type(error).__name__}: {error}", param) from None


def _fetch(url: urllib.parse.ParseResult, port: int, policy: FetchPolicy, max_bytes: int) -> bytes:
    """GET `url` from an address its host resolves to, once checked; no redirects; one deadline.

    Every address the name resolves to must be allowed (a name that resolves to a public and a
    private address is refused), and the connection goes to a checked address itself (not the name
    again), so a DNS answer that changes between the check and the connect cannot move the fetch
    elsewhere. The deadline is a timer that shuts the socket's file descriptor, which also ends a
    server that trickles its reply a byte at a time, TLS handshake included.
    """
    deadline = time.monotonic() + policy.timeout_s
    addresses = list(dict.fromkeys(info[4][0] for info in socket.getaddrinfo(url.hostname, port,
                                                                            type=socket.SOCK_STREAM)))
    if not policy.private_addresses:
        for address in addresses:
            if not _public(ipaddress.ip_address(address.split("%")[0])):
                raise BadInput(f"{url.hostname!r} resolves to {address}, which is not a public address; the server "
                               "fetches only from public addresses (--allow-private-image-addresses to allow others)")
    sock = _connect(addresses, port, deadline, policy)
    timer = threading.Timer(max(deadline - time.monotonic(), 0.0), _shut, (sock,))
    timer.start()
    try:
        if url.scheme == "https":
            connection = http.client.HTTPSConnection(url.hostname, port)
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=url.hostname)
        else:
            connection = http.client.HTTPConnection(url.hostname, port)
        connection.sock = sock  # already connected to the checked address
        path = urllib.parse.quote(url.path or "/", safe="/%:@!$&'()*+,;=~")
        query = urllib.parse.quote(url.query, safe="/%:@!$&'()*+,;=~?")
        connection.request("GET", path + (f"?{query}" if query else ""), headers={"Accept": "image/png, image/jpeg"})
        response = connection.getresponse()
        if 300 <= response.status < 400:
            raise BadInput(f"it answered {response.status} {response.reason} (to {response.getheader('Location')!r}); "
                           "redirects are not followed: give the image's own URL")
        if response.status != 200:
            raise BadInput(f"it answered {response.status} {response.reason}")
        data = bytearray()
        while len(data) <= max_bytes and (chunk := response.read(min(65536, max_bytes + 1 - len(data)))):
            data += chunk
    except (OSError, ValueError, AttributeError):  # a socket the deadline shut (TLS reads raise the last two)
        if time.monotonic() >= deadline:
            raise BadInput(f"it took over serve.fetch_timeout_s={policy.timeout_s} s") from None
        raise
    finally:
        timer.cancel()
        sock.close()
    if time.monotonic() >= deadline:
        raise BadInput(f"it took over serve.fetch_timeout_s={policy.timeout_s} s")
    if len(data) > max_bytes:
        raise BadInput(f"the image is over {max_bytes} bytes")
    return bytes(data)


def _public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """A globally routed unicast address, and so is any IPv4 address an IPv6 one carries (mapped,
    6to4, Teredo, NAT64): `is_global` alone passes 64:ff9b::a00:1, which reaches 10.0.0.1."""
    if not ip.is_global or ip.is_multicast or ip.is_reserved:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        teredo = ip.teredo[1] if ip.teredo else None
        nat64 = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF) if ip in ipaddress.IPv6Network("64:ff9b::/96") else None
        compatible = ipaddress.IPv4Address(int(ip)) if int(ip) >> 32 == 0 else None
        return all(_public(inner) for inner in (ip.ipv4_mapped, ip.sixtofour, teredo, nat64, compatible) if inner)
    return True


def _connect(addresses: list[str], port: int, deadline: float, policy: FetchPolicy) -> socket.socket:
    """A connection to the first of `addresses` (in the resolver's order) that answers in time."""
    error: OSError | None = None
    for address in addresses:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            return socket.create_connection((address, port), timeout=remaining)
        except OSError as failed:
            error = failed
    if error is not None and time.monotonic() < deadline:
        raise error
    raise BadInput(f"it took over serve.fetch_timeout_s={policy.timeout_s} s to connect")


def _shut(sock: socket.socket) -> None:
    try:  # the descriptor itself: wakes a blocked recv, TLS or not (SSLSocket.shutdown would unwrap it)
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass


def check_image(data: bytes, param: str) -> bytes:
    """Refuse undecodable and oversized images before anything decodes their pixels."""
    try:
        media.check_image(data)
    except ValueError as error:
        raise BadInput(f"{param}: {error}", param) from None
    return data


def audio_waveform(data: str, audio_format: str, param: str, sample_rate: int, max_seconds: float,
                   max_rate: int) -> np.ndarray:
    """float32 mono samples at `sample_rate` from base64 WAV recorded at up to `max_rate` Hz."""
    if audio_format != "wav":
        raise BadInput(f"{param}: unsupported audio format {audio_format!r}; send 'wav'", param)
    try:
        return media.prepare_audio(_b64(data, param), max_seconds=max_seconds, target_rate=sample_rate,
                                   max_rate=max_rate)
    except BadInput:
        raise
    except ValueError as error:
        raise BadInput(f"{param}: {error}", param) from None


def video_bytes(url: str, param: str, max_bytes: int) -> tuple[bytes, str]:
    """(the encoded video a `video_url` part's data URL holds, its container), refused when over
    `max_bytes` (before any frame is decoded)."""
    match = _DATA_URL.fullmatch(url.strip()) if url.startswith("data:") else None
    if not match:
        raise BadInput(f"{param}: send the video as a data URL, data:video/mp4;base64,<data> (or video/webm, "
                       f"image/gif); remote videos are not fetched", param)
    if (match["mime"] or "").lower() not in VIDEO_TYPES:
        raise BadInput(f"{param}: unsupported video type {match['mime']!r}; send one of {tuple(VIDEO_TYPES)}", param)
    data = _b64(match["data"], param)  # the body's own limit bounds this
    if len(data) > max_bytes:
        raise BadInput(f"{param}: {len(data)} bytes of video is over the limit of {max_bytes} (serve.max_video_bytes)",
                       param, "video_too_large")
    return data, VIDEO_TYPES[match["mime"].lower()]


def video_frames(data: bytes, container: str, param: str, size: int, fps: float, max_frames: int,
                 max_seconds: float, max_decoded: int) -> np.ndarray:
    """uint8 [F, size, size, 3]: the clip, read as `container` only, sampled at `fps`, at most
    `max_frames` (data/media.py)."""
    try:
        return media.prepare_video(data, size, fps, max_frames, max_seconds=max_seconds, max_decoded=max_decoded,
                                   container_format=container)
    except ValueError as error:
        limit = (" (serve.max_video_seconds)" if "too long" in str(error) else
                 " (serve.max_video_frames)" if "frames before" in str(error) else "")
        raise BadInput(f"{param}: {error}{limit}", param) from None


def png_data_url(pixels: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(pixels, np.uint8)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
