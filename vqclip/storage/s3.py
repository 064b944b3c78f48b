"""S3Store: objects in an S3 bucket (AWS or a compatible server such as SeaweedFS) through boto3."""

from __future__ import annotations

import logging
import mimetypes
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import boto3
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, CredentialRetrievalError, NoCredentialsError, PartialCredentialsError

from vqclip.errors import ObjectNotFound, PermanentStorageError, StorageError, TransientStorageError
from vqclip.storage.base import validate_key, validate_prefix

logger = logging.getLogger(__name__)

MIB = 1 << 20
_MIN_PART = 5 * MIB  # S3 rejects smaller multipart parts (except the last)
_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")

_CREDENTIAL_CODES = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "TokenRefreshRequired",
    "AuthorizationHeaderMalformed",
    "InvalidSecurity",
}
_DENIED_CODES = {"AccessDenied", "AllAccessDisabled", "AccountProblem"}
_UNFIXABLE_CODES = {"InvalidBucketName", "PermanentRedirect", "NotImplemented", "InvalidArgument", "EntityTooLarge"}
# A conditional request whose condition did not hold (412), that raced another one (409), or, on
# AWS, a conditional delete of an object already gone (404; SeaweedFS answers 412).
_CONDITION_LOST_CODES = {"PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey"}


class S3Store:
    """An object store in `bucket` under `prefix`; credentials come from boto3's standard chain.

    `max_attempts`, `connect_timeout` and `read_timeout` go to botocore's Config (retry mode
    "standard", which retries throttling, 5xx and connection errors with backoff).
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        path_style: bool = True,
        region_name: str | None = None,
        max_attempts: int = 5,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        multipart_threshold: int = 8 * MIB,
    ) -> None:
        if not _BUCKET_NAME.match(bucket):
            raise PermanentStorageError(
                f"S3 bucket name {bucket!r} is not valid: use 3 to 63 lowercase letters, digits, '.' and '-' (s3://bucket/prefix)"
            )
        prefix = prefix.strip("/")
        if prefix:
            validate_key(prefix)
        self.bucket = bucket
        self.prefix = f"{prefix}/" if prefix else ""
        self.uri = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
        config = Config(
            retries={"mode": "standard", "max_attempts": max_attempts},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            s3={"addressing_style": "path" if path_style else "auto"},
        )
        # A private session: boto3's default session is not safe to share across threads.
        self._client = boto3.session.Session().client("s3", endpoint_url=endpoint_url, region_name=region_name, config=config)
        chunk = max(multipart_threshold, _MIN_PART)
        self._transfer = TransferConfig(multipart_threshold=multipart_threshold, multipart_chunksize=chunk)

    def __repr__(self) -> str:
        return f"S3Store({self.uri!r}, endpoint_url={self.endpoint!r})"

    @property
    def endpoint(self) -> str:
        """The S3 endpoint URL this store talks to."""
        return self._client.meta.endpoint_url

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None:
        """Store `data` under `key` in one PUT."""
        with self._errors("write", key):
            content_type = _content_type(key, content_type)
            self._client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, ContentType=content_type)

    def put_file(self, key: str, path: str | os.PathLike[str], content_type: str | None = None) -> None:
        """Upload the file at `path` under `key`; multipart (in parallel) above the threshold."""
        if not os.path.isfile(path):
            raise StorageError(f"cannot upload {os.fspath(path)!r} as {key!r}: it is not a readable file")
        extra = {"ContentType": _content_type(key, content_type)}
        with self._errors("write", key):
            try:
                self._client.upload_file(os.fspath(path), self.bucket, self._key(key), ExtraArgs=extra, Config=self._transfer)
            except S3UploadFailedError as exc:
                # The transfer manager wraps the ClientError; unwrap it so it maps like any other.
                if isinstance(exc.__context__, ClientError):
                    raise self._client_error(exc.__context__, "write", key) from exc
                raise TransientStorageError(f"upload of {key!r} to {self.url(key)} failed; try again") from exc

    def get_bytes(self, key: str) -> bytes:
        """The object under `key`; `ObjectNotFound` when there is none."""
        with self._errors("read", key):
            return self._client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()

    def exists(self, key: str) -> bool:
        """Whether an object is stored under `key`."""
        with self._errors("check", key):
            try:
                self._client.head_object(Bucket=self.bucket, Key=self._key(key))
            except ClientError as exc:
                if _status(exc) == 404 and _code(exc) != "NoSuchBucket":
                    return False
                raise
        return True

    def size(self, key: str) -> int:
        """The size in bytes of the object under `key` (one HEAD request); `ObjectNotFound` when there is none."""
        with self._errors("check", key):
            try:
                return self._client.head_object(Bucket=self.bucket, Key=self._key(key))["ContentLength"]
            except ClientError as exc:
                if _status(exc) == 404 and _code(exc) != "NoSuchBucket":
                    raise ObjectNotFound(f"no object {key!r} in {self.uri}") from None
                raise

    def list(self, prefix: str = "") -> list[str]:
        """Every key that starts with `prefix`, at any depth, sorted."""
        validate_prefix(prefix)
        keys = []
        with self._errors(f"list keys under {prefix!r}" if prefix else "list keys", ""):
            for page in self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
                keys += [item["Key"][len(self.prefix) :] for item in page.get("Contents", [])]
        return sorted(keys)

    def delete(self, key: str) -> None:
        """Remove the object under `key`; a missing object is not an error."""
        with self._errors("delete", key):
            self._client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def claim(self, src_key: str, dst_key: str) -> bool:
        """Copy `src_key` to `dst_key` if absent (If-None-Match), then delete the source if unchanged (If-Match).

        Exactly one concurrent claimer wins: claimers that name the same destination lose at the
        conditional put; claimers that name different destinations lose at the conditional delete
        and remove their copy. Needs conditional writes (AWS S3, SeaweedFS 4.x); on a server that
        ignores If-Match on delete, one winner is still guaranteed among claimers that name the
        same destination, so derive the destination from the source.
        """
        src, dst = self._key(src_key), self._key(dst_key)
        if src == dst:
            raise StorageError(f"cannot claim {src_key!r} onto itself; pick a different destination key")
        try:
            with self._errors("read", src_key):
                found = self._client.get_object(Bucket=self.bucket, Key=src)
                data = found["Body"].read()
        except ObjectNotFound:
            return False
        content_type = found.get("ContentType") or _content_type(dst_key, None)
        put = dict(Bucket=self.bucket, Key=dst, Body=data, ContentType=content_type, IfNoneMatch="*")
        if not self._conditional("write", dst_key, self._client.put_object, **put):
            logger.info("not claiming %s: %s already exists", src_key, dst_key)
            return False
        if self._conditional("delete", src_key, self._client.delete_object, Bucket=self.bucket, Key=src, IfMatch=found["ETag"]):
            return True
        logger.info("not claiming %s: another claimer took it first", src_key)
        self.delete(dst_key)
        return False

    def evict(self, listed_key: str, dst_key: str) -> bool:
        """Copy a listed object, whatever its key, to `dst_key` within the server, then delete it if unchanged.

        Nothing passes through this process, however large the object. False if it was gone or changed
        first; the copy is then deleted, so `dst_key` must be one no other caller picks.
        """
        if not listed_key:
            raise StorageError("an empty object key names no object")
        src, dst = self.prefix + listed_key, self._key(dst_key)
        with self._errors("check", listed_key):
            try:
                etag = self._client.head_object(Bucket=self.bucket, Key=src)["ETag"]
            except ClientError as exc:
                if _status(exc) == 404 and _code(exc) != "NoSuchBucket":
                    return False
                raise
        source = {"Bucket": self.bucket, "Key": src}
        copy = dict(Bucket=self.bucket, Key=dst, CopySource=source, CopySourceIfMatch=etag)
        if not self._conditional("copy", listed_key, self._client.copy_object, **copy):
            return False
        if self._conditional("delete", listed_key, self._client.delete_object, Bucket=self.bucket, Key=src, IfMatch=etag):
            return True
        self.delete(dst_key)
        return False

    def url(self, key: str = "") -> str:
        """The s3:// URI of `key` (or of a prefix such as 'runs/<id>/')."""
        validate_prefix(key)
        return f"s3://{self.bucket}/{self.prefix}{key}"

    def create_bucket(self) -> None:
        """Create the bucket if it does not exist yet (for local stacks and tests)."""
        region = self._client.meta.region_name
        extra: dict[str, Any] = {}
        if region and region != "us-east-1":
            extra["CreateBucketConfiguration"] = {"LocationConstraint": region}
        with self._errors("create the bucket", ""):
            try:
                self._client.create_bucket(Bucket=self.bucket, **extra)
                logger.info("created S3 bucket %s at %s", self.bucket, self.endpoint)
            except ClientError as exc:
                if _code(exc) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise

    def _key(self, key: str) -> str:
        return self.prefix + validate_key(key)

    def _conditional(self, action: str, key: str, call: Callable[..., Any], **params: Any) -> bool:
        """Run a conditional request: True if it took effect, False if its condition did not hold."""
        with self._errors(action, key):
            try:
                call(**params)
            except ClientError as exc:
                if _code(exc) in _CONDITION_LOST_CODES:
                    return False
                raise
        return True

    @contextmanager
    def _errors(self, action: str, key: str) -> Iterator[None]:
        """Turn boto3's exceptions into `StorageError`s that say what failed and what to do."""
        try:
            yield
        except ClientError as exc:
            raise self._client_error(exc, action, key) from exc
        except (NoCredentialsError, PartialCredentialsError, CredentialRetrievalError) as exc:
            raise PermanentStorageError(
                f"no usable S3 credentials to {_what(action, key)} in {self.uri} at {self.endpoint}: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) for an identity that may use this bucket"
            ) from exc
        except BotoCoreError as exc:
            raise TransientStorageError(
                f"could not {_what(action, key)} in {self.uri}: S3 endpoint {self.endpoint} did not answer "
                f"({type(exc).__name__}) after boto3's retries; check that the server is up and "
                "VQCLIP_S3_ENDPOINT_URL is right, then retry"
            ) from exc

    def _client_error(self, exc: ClientError, action: str, key: str) -> StorageError:
        code, status = _code(exc), _status(exc)
        where = f"bucket {self.bucket!r} at {self.endpoint}"
        if code == "NoSuchKey":
            return ObjectNotFound(f"no object {key!r} in {self.uri}")
        if code == "NoSuchBucket":
            return PermanentStorageError(f"S3 {where} does not exist: create the bucket or fix the storage URI ({self.uri})")
        if code in _CREDENTIAL_CODES:
            return PermanentStorageError(
                f"S3 rejected the credentials for {where} ({code}): check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                "(or AWS_PROFILE) and that the endpoint is right"
            )
        if code in _DENIED_CODES or status in (401, 403):
            return PermanentStorageError(
                f"S3 refused access to {where} when trying to {_what(action, key)} ({code}): check AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), and that this identity may read, write, list and delete in the bucket"
            )
        if code in _UNFIXABLE_CODES:
            return PermanentStorageError(f"S3 {where} refused to {_what(action, key)}: {code} (HTTP {status})")
        # Throttling, 5xx and any code not known to be final: boto3's retries ran out, a later try may not.
        return TransientStorageError(
            f"S3 {where} failed to {_what(action, key)}: {code} (HTTP {status}) after boto3's retries; retry later"
        )


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: ClientError) -> int | None:
    return exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")


def _what(action: str, key: str) -> str:
    return f"{action} {key!r}" if key else action


def _content_type(key: str, given: str | None) -> str:
    return given or mimetypes.guess_type(key)[0] or "application/octet-stream"
