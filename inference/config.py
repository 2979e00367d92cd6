"""The endpoint's settings: one frozen dataclass, every field with its unit and its reason."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

__all__ = ["DEFAULT_MAX_PIXELS", "ServerConfig"]

# 25 megapixels (e.g. 5000 x 5000): above any camera photo a client should send to a
# 64-pixel classifier, and a decoded RGB copy stays under 75 MB per concurrent decode.
# Here, in a module that imports nothing heavy, so CLIs can show it without numpy or PIL.
DEFAULT_MAX_PIXELS = 25_000_000


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"  # never 0.0.0.0 by default: the local endpoint is for this machine
    port: int = 8080  # SageMaker container contract; 0 picks a free port
    workers: int = 1  # concurrent model calls; 1 loop + 1 model thread fill a 2-core box
    max_batch: int = 32  # images per model call; also the most instances one request may carry
    max_wait_ms: float = 2.0  # longest a batch waits for more images (only when more are coming)
    max_queued_images: int = 1024  # images (and explained images) waiting for the model; 503 beyond
    max_body_bytes: int = 6_291_456  # 6 MiB, SageMaker's real-time payload limit
    max_pixels: int = DEFAULT_MAX_PIXELS  # declared width x height of one image, before decoding
    max_request_pixels: int = DEFAULT_MAX_PIXELS  # declared pixels of all images of one request
    max_parse_bytes: int = 256 * 2**20  # estimated memory to parse one JSON body; 413 beyond
    # From a connection's first byte (or a kept-alive connection's next request's first byte) to
    # the end of the request head; a new connection that sends nothing is closed after this too.
    header_timeout_s: float = 5.0
    body_timeout_s: float = 30.0  # whole body (>= 200 KB/s for 6 MiB)
    keepalive_timeout_s: float = 5.0  # idle time allowed between two requests on one connection
    request_timeout_s: float = (
        60.0  # decode + queue + model (+ explain); SageMaker gives up at 60 s
    )
    grace_s: float = 25.0  # SIGTERM: time for requests in flight (SageMaker SIGKILLs at 30 s)
    max_connections: int = 1024  # beyond: the oldest connection without a request is closed
    max_header_bytes: int = 16_384  # request line + all headers
    max_headers: int = 100
    max_inflight_body_bytes: int = 256 * 2**20  # all bodies held at once (~40 maximum-size ones)
    decode_threads: int = 2  # image decoding and large-body parsing, off the event loop
    decode_queue: int = 64  # decode jobs waiting or running; 503 + Retry-After beyond
    top_k: int = 5
    explain_max_instances: int = 8  # saliency costs a backward pass per image
    inline_decode_bytes: int = 65_536  # smaller .npy / numeric JSON bodies are parsed on the loop
    access_log: bool = True
    # Data capture (inference/capture.py): percent of answered requests written to capture_uri
    capture_uri: str | None = None  # s3://bucket/prefix; None: no capture
    capture_percent: float = 0.0
    endpoint_name: str = "lepton-classifier"  # the capture layout's <endpoint> folder
    # Another server may listen on the same port (SO_REUSEPORT): the local blue/green deploy
    # starts the new model beside the old one, then stops the old.
    reuse_port: bool = False
    allow_remote: bool = False
    # Behind SageMaker hosting (the image's `serve`): any address, no token (security.check_bind)
    sagemaker_hosting: bool = False  # binding a non-loopback address must be asked for explicitly
    # Bearer token for /invocations, /metrics and /execution-parameters (never /ping); required
    # when allow_remote. Kept out of repr so that it never reaches a log line.
    auth_token: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        positive = {
            "workers": self.workers,
            "max_batch": self.max_batch,
            "max_body_bytes": self.max_body_bytes,
            "max_pixels": self.max_pixels,
            "max_request_pixels": self.max_request_pixels,
            "max_parse_bytes": self.max_parse_bytes,
            "max_connections": self.max_connections,
            "decode_threads": self.decode_threads,
            "decode_queue": self.decode_queue,
        }
        bad = [name for name, value in positive.items() if value < 1]
        if bad:
            raise ValueError(f"must be >= 1: {', '.join(bad)}")
        if not 0 <= self.capture_percent <= 100:
            raise ValueError(f"capture_percent must be in 0..100, got {self.capture_percent}")
        if self.auth_token is not None and not self.auth_token:
            raise ValueError("auth_token must not be empty (use None for no token)")

    def public(self) -> dict[str, object]:
        """The settings fit for a log line: everything but the token."""
        doc = asdict(self)
        doc["auth_token"] = "<set>" if self.auth_token else None
        return doc
