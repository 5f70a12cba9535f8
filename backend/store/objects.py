"""Model versions as objects in S3-compatible storage (boto3), for :mod:`backend.isnet.remote`.

Layout under ``s3://bucket/prefix``: ``versions/<name>/<file>`` for each file of a version, and
``versions/<name>/manifest.json`` (``{"files": {path: {"sha256", "size"}}}``) written after them,
so a version exists once its manifest does and every download is checked against it. Endpoint,
region and credentials are boto3's usual ones (``AWS_ENDPOINT_URL``, ``AWS_REGION``,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``). No conditional write is relied on: names are
unique (time and random digits) and the pointers that make a version current live in Redis.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from backend.isnet.remote import StoreUnavailable

MANIFEST = "manifest.json"
LIGHT_MAX_BYTES = 2 * 1024 * 1024
"""Files a light download (records for listings and histories) takes: small, and no weights."""
HEAVY_SUFFIXES = (".pth", ".onnx", ".engine", ".plan", ".bin")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _local_files(directory: Path) -> list[Path]:
    """A version's files, hidden ones (locks, work in progress) left out."""
    return sorted(p for p in directory.rglob("*") if p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(directory).parts))


class S3Versions:
    """The versions under one ``s3://bucket/prefix``."""

    def __init__(self, url: str, client: Any = None) -> None:
        parts = urlsplit(url)
        self.url = url
        self.bucket = parts.netloc
        self.prefix = parts.path.strip("/")
        self._client = client
        self._guard = threading.Lock()

    @property
    def client(self) -> Any:
        with self._guard:
            if self._client is None:
                import boto3
                from botocore.config import Config

                logging.getLogger("botocore.credentials").setLevel(logging.WARNING)  # not a line per process

                self._client = boto3.client("s3", config=Config(
                    connect_timeout=5, read_timeout=60, retries={"max_attempts": 3, "mode": "standard"}))
            return self._client

    def _key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, "versions", *parts) if p)

    def _unavailable(self, doing: str, exc: Exception) -> StoreUnavailable:
        return StoreUnavailable(f"model store {self.url} unreachable while {doing}: {type(exc).__name__}: {exc}")

    def _manifest(self, name: str) -> dict[str, dict[str, Any]] | None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(name, MANIFEST))["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                return None
            raise self._unavailable(f"reading {name}'s manifest", exc) from exc
        except BotoCoreError as exc:
            raise self._unavailable(f"reading {name}'s manifest", exc) from exc
        files = json.loads(body).get("files")
        return files if isinstance(files, dict) else {}

    def files(self, name: str) -> dict[str, dict[str, Any]] | None:
        return self._manifest(name)

    def names(self) -> list[str]:
        from botocore.exceptions import BotoCoreError, ClientError

        found: list[str] = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self._key("") + "/", Delimiter="/")
            for page in pages:
                for entry in page.get("CommonPrefixes", []) or []:
                    found.append(entry["Prefix"].rstrip("/").rsplit("/", 1)[-1])
        except (BotoCoreError, ClientError) as exc:
            raise self._unavailable("listing versions", exc) from exc
        return sorted(n for n in found if n and not n.startswith("."))

    def upload(self, name: str, directory: Path) -> int:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            manifest = self._manifest(name) or {}
            uploaded = 0
            for path in _local_files(directory):
                rel = path.relative_to(directory).as_posix()
                if rel == MANIFEST:
                    continue
                digest = _sha256(path)
                if manifest.get(rel, {}).get("sha256") == digest:
                    continue
                self.client.upload_file(str(path), self.bucket, self._key(name, rel))
                manifest[rel] = {"sha256": digest, "size": path.stat().st_size}
                uploaded += 1
            if uploaded:
                body = json.dumps({"files": manifest}, indent=2, sort_keys=True).encode()
                self.client.put_object(Bucket=self.bucket, Key=self._key(name, MANIFEST), Body=body)
        except (BotoCoreError, ClientError) as exc:
            raise self._unavailable(f"uploading {name}", exc) from exc
        return uploaded

    def download(self, name: str, directory: Path, light: bool = False) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        manifest = self._manifest(name)
        if manifest is None:
            raise KeyError(f"no model version {name!r} in {self.url}")
        for rel, entry in sorted(manifest.items()):
            if light and (int(entry.get("size", 0)) > LIGHT_MAX_BYTES or rel.endswith(HEAVY_SUFFIXES)):
                continue
            target = directory / rel
            if Path(rel).is_absolute() or ".." in Path(rel).parts:
                raise OSError(f"{self.url}: {name}'s manifest names {rel!r}, outside the version")
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                self.client.download_file(self.bucket, self._key(name, rel), str(target))
            except (BotoCoreError, ClientError) as exc:
                raise self._unavailable(f"downloading {name}/{rel}", exc) from exc
            if _sha256(target) != entry.get("sha256"):
                target.unlink(missing_ok=True)
                raise OSError(f"{self.url}: {name}/{rel} does not match its sha256 in the manifest "
                              "(a damaged or half-written object); it was not used")

    def delete(self, name: str, files: list[str] | None = None) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            manifest = self._manifest(name) or {}
            doomed = list(manifest) if files is None else \
                [m for m in manifest if any(m == f or m.startswith(f.rstrip("/") + "/") for f in files)]
            if files is not None:
                for rel in doomed:
                    manifest.pop(rel, None)
                body = json.dumps({"files": manifest}, indent=2, sort_keys=True).encode()
                self.client.put_object(Bucket=self.bucket, Key=self._key(name, MANIFEST), Body=body)
            else:  # the manifest first: the version is gone at once, not file by file
                self.client.delete_object(Bucket=self.bucket, Key=self._key(name, MANIFEST))
            for start in range(0, len(doomed), 1000):
                batch = [{"Key": self._key(name, rel)} for rel in doomed[start:start + 1000]]
                if batch:
                    self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
        except (BotoCoreError, ClientError) as exc:
            raise self._unavailable(f"deleting {name}", exc) from exc

    def _shared_key(self, folder: str, name: str = "") -> str:
        return "/".join(p for p in (self.prefix, "shared", folder, name) if p)

    def _listing(self, folder: str) -> dict[str, int]:
        from botocore.exceptions import BotoCoreError, ClientError

        found: dict[str, int] = {}
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self._shared_key(folder) + "/")
            for page in pages:
                for entry in page.get("Contents", []) or []:
                    found[entry["Key"].rsplit("/", 1)[-1]] = int(entry["Size"])
        except (BotoCoreError, ClientError) as exc:
            raise self._unavailable(f"listing the shared {folder}", exc) from exc
        return found

    def pull(self, folder: str, local: Path) -> int:
        from botocore.exceptions import BotoCoreError, ClientError

        pulled = 0
        for name, size in sorted(self._listing(folder).items()):
            target = local / name
            if name.startswith(".") or (target.is_file() and target.stat().st_size == size):
                continue
            local.mkdir(parents=True, exist_ok=True)
            part = local / f".{name}.part"
            try:
                self.client.download_file(self.bucket, self._shared_key(folder, name), str(part))
            except (BotoCoreError, ClientError) as exc:
                part.unlink(missing_ok=True)
                raise self._unavailable(f"downloading the shared {folder}/{name}", exc) from exc
            part.replace(target)
            pulled += 1
        return pulled

    def push(self, folder: str, local: Path) -> int:
        from botocore.exceptions import BotoCoreError, ClientError

        there = self._listing(folder)
        pushed = 0
        for path in sorted(local.iterdir()) if local.is_dir() else []:
            if path.name.startswith(".") or not path.is_file() or there.get(path.name) == path.stat().st_size:
                continue
            try:
                self.client.upload_file(str(path), self.bucket, self._shared_key(folder, path.name))
            except (BotoCoreError, ClientError) as exc:
                raise self._unavailable(f"uploading the shared {folder}/{path.name}", exc) from exc
            pushed += 1
        return pushed

    def remove(self, folder: str, names: list[str]) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            keys = [self._shared_key(folder, n) for n in names]
            for name in names:  # a folder's name: everything under it
                pages = self.client.get_paginator("list_objects_v2").paginate(
                    Bucket=self.bucket, Prefix=self._shared_key(folder, name).rstrip("/") + "/")
                keys += [entry["Key"] for page in pages for entry in page.get("Contents", []) or []]
            for start in range(0, len(keys), 1000):
                batch = [{"Key": key} for key in keys[start:start + 1000]]
                if batch:
                    self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
        except (BotoCoreError, ClientError) as exc:
            raise self._unavailable(f"removing shared {folder}", exc) from exc

    def put_file(self, rel: str, path: Path) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        key = self._shared_key("files", rel)
        try:
            try:
                if int(self.client.head_object(Bucket=self.bucket, Key=key)["ContentLength"]) == path.stat().st_size:
                    return False
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in ("NoSuchKey", "404", "NotFound"):
                    raise
            self.client.upload_file(str(path), self.bucket, key)
        except (BotoCoreError, ClientError) as exc:
            raise self._unavailable(f"uploading {rel}", exc) from exc
        return True

    def get_file(self, rel: str, path: Path) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            return False
        path.parent.mkdir(parents=True, exist_ok=True)
        part = path.with_name(f".{path.name}.part")
        try:
            self.client.download_file(self.bucket, self._shared_key("files", rel), str(part))
        except ClientError as exc:
            part.unlink(missing_ok=True)
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                return False
            raise self._unavailable(f"downloading {rel}", exc) from exc
        except BotoCoreError as exc:
            part.unlink(missing_ok=True)
            raise self._unavailable(f"downloading {rel}", exc) from exc
        part.replace(path)
        return True

    def check(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except (BotoCoreError, ClientError) as exc:
            raise self._unavailable("checking the bucket", exc) from exc
