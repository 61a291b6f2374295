"""Where data lives: S3 settings from the standard AWS environment, filesystems, reachability.

A data URI is `s3://bucket/prefix` (AWS or any S3-compatible endpoint) or a local path.
`filesystem_for` turns it into a pyarrow filesystem plus a scheme-less path, so that every
reader and writer in `workloads.data` treats local folders and buckets the same way.

Settings are read once on the driver and travel inside the filesystem object to Ray tasks:
the worker processes of a long-lived Ray instance do not see environment variables set after
they started, so they must never read the AWS environment themselves.

The region pyarrow signs with is the bucket's own when the store says it (HeadBucket's
`x-amz-bucket-region`, the answer pyarrow's `resolve_s3_region` reads too, which asks AWS
only), else the configured one: AWS_REGION, AWS_DEFAULT_REGION, the boto3 profile's region,
then us-east-1. pyarrow does not follow S3's wrong-region redirects by itself.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

import pyarrow.fs

DEFAULT_REGION = "us-east-1"
S3_SCHEME = "s3://"
# Bounded so that a bad endpoint fails a run within seconds instead of hanging a worker.
_CONNECT_TIMEOUT_S = 5.0
# A socket read timeout, not a cap on a whole shard's download (pyarrow applies it on macOS
# and Windows only; on Linux the bounded retries are what keeps a dead endpoint from hanging).
_REQUEST_TIMEOUT_S = 30.0
_READ_ATTEMPTS = 3
# The reachability check asks two tiny questions and must answer within seconds.
_CHECK_CONNECT_TIMEOUT_S = 3
_CHECK_READ_TIMEOUT_S = 5
_CHECK_MAX_ATTEMPTS = 2
_MISSING_BUCKET_CODES = {"404", "NoSuchBucket"}
_ACCESS_DENIED_CODES = {
    "403",
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
}
# Credentials that boto3 finds in these places are plain keys that never expire; anything
# else (instance roles, SSO, assumed roles) refreshes itself, so freezing it would make a
# long run fail after an hour. Those are left to the SDKs' own default chains instead.
_STATIC_CREDENTIAL_METHODS = {"shared-credentials-file", "config-file"}


class DataSourceError(ValueError):
    """A data source that cannot be used, with one line that names its URI and the fix."""


@dataclass(frozen=True)
class S3Settings:
    """How to reach an S3-compatible store; None means "let the AWS SDK decide"."""

    endpoint_url: str | None = None
    region: str | None = None
    access_key: str | None = None
    secret_key: str | None = None
    session_token: str | None = None

    @classmethod
    def from_env(cls) -> S3Settings:
        """Settings from the standard AWS variables, falling back to the boto3 profile."""
        environ = os.environ
        endpoint_url = environ.get("AWS_ENDPOINT_URL_S3") or environ.get("AWS_ENDPOINT_URL")
        region = (
            environ.get("AWS_REGION")
            or environ.get("AWS_DEFAULT_REGION")
            or _profile_region()
            or DEFAULT_REGION
        )
        access_key = environ.get("AWS_ACCESS_KEY_ID")
        secret_key = environ.get("AWS_SECRET_ACCESS_KEY")
        session_token = environ.get("AWS_SESSION_TOKEN")
        if not (access_key and secret_key):
            access_key, secret_key, session_token = _profile_credentials()
        return cls(endpoint_url or None, region, access_key, secret_key, session_token)

    def __repr__(self) -> str:
        # Settings end up in logs and error reports: never print the secret.
        secret = "***" if self.secret_key else None
        return (
            f"S3Settings(endpoint_url={self.endpoint_url!r}, region={self.region!r}, "
            f"access_key={self.access_key!r}, secret_key={secret!r})"
        )


def is_s3_uri(uri: str) -> bool:
    return uri.startswith(S3_SCHEME)


def split_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix/` -> ("bucket", "some/prefix")."""
    if not is_s3_uri(uri):
        raise DataSourceError(f"data source {uri!r}: not an s3:// URI")
    bucket, _, key = uri[len(S3_SCHEME) :].partition("/")
    if not bucket:
        raise DataSourceError(f"data source {uri!r}: no bucket name (expected s3://bucket/prefix)")
    return bucket, key.strip("/")


def filesystem_for(
    uri: str, settings: S3Settings | None = None
) -> tuple[pyarrow.fs.FileSystem, str]:
    """The pyarrow filesystem that holds `uri` and the path inside it (no scheme).

    `s3://bucket/prefix` gives an S3FileSystem and "bucket/prefix"; a local path (or
    `file://` URI) gives the LocalFileSystem and the absolute path.
    """
    if is_s3_uri(uri):
        bucket, key = split_s3_uri(uri)
        settings = settings or S3Settings.from_env()
        region = bucket_region(bucket, settings)
        return _s3_filesystem(replace(settings, region=region)), f"{bucket}/{key}".rstrip("/")
    if "://" in uri and not uri.startswith("file://"):
        scheme = uri.split("://", 1)[0]
        raise DataSourceError(
            f"data source {uri!r}: unsupported scheme {scheme}:// (use s3:// or a local path)"
        )
    path = uri.removeprefix("file://")
    return pyarrow.fs.LocalFileSystem(), os.path.abspath(os.path.expanduser(path))


def check_reachable(
    uri: str, settings: S3Settings | None = None, *, require_data: bool = True
) -> None:
    """Fail fast, with one clear line, when `uri` cannot be read (or written, for a push).

    Catches an unreachable endpoint, a missing bucket, wrong credentials and (with
    `require_data`) an empty prefix. Takes seconds at worst: it asks two small questions
    with short timeouts and few retries, so a run fails before any worker starts.
    """
    if not is_s3_uri(uri):
        _check_local(uri, require_data)
        return
    import botocore.exceptions

    settings = settings or S3Settings.from_env()
    bucket, key = split_s3_uri(uri)
    client = _check_client(settings)
    where = settings.endpoint_url or f"AWS S3 ({settings.region or DEFAULT_REGION})"
    try:
        client.head_bucket(Bucket=bucket)
        if require_data and not _has_objects(client, bucket, key):
            raise DataSourceError(f"data source {uri!r}: no objects under this prefix")
    except botocore.exceptions.ClientError as error:
        raise _client_error(uri, bucket, where, error) from None
    except botocore.exceptions.NoCredentialsError:
        raise DataSourceError(
            f"data source {uri!r}: no AWS credentials found; set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (or an AWS profile)"
        ) from None
    except (
        botocore.exceptions.EndpointConnectionError,
        botocore.exceptions.ConnectTimeoutError,
        botocore.exceptions.ReadTimeoutError,
        botocore.exceptions.ConnectionClosedError,
    ) as error:
        raise DataSourceError(
            f"data source {uri!r}: cannot reach the S3 endpoint {where} "
            f"({type(error).__name__}); check AWS_ENDPOINT_URL and the network"
        ) from None


def bucket_region(bucket: str, settings: S3Settings) -> str:
    """The region `bucket` lives in, as its store reports it; else the configured region."""
    return _reported_region(bucket, settings) or settings.region or DEFAULT_REGION


@functools.lru_cache(maxsize=64)  # asked once per process and bucket, not once per shard
def _reported_region(bucket: str, settings: S3Settings) -> str | None:
    import botocore.exceptions

    try:
        response = _check_client(settings).head_bucket(Bucket=bucket)
    except botocore.exceptions.ClientError as error:
        # AWS names the bucket's region on a redirect or a refusal too.
        response = getattr(error, "response", None) or {}
    except botocore.exceptions.BotoCoreError:  # unreachable, no credentials: the reader says
        return None
    headers = response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
    return headers.get("x-amz-bucket-region") or None


def _s3_filesystem(settings: S3Settings) -> pyarrow.fs.S3FileSystem:
    options: dict[str, object] = {
        "region": settings.region or DEFAULT_REGION,
        "access_key": settings.access_key,
        "secret_key": settings.secret_key,
        "session_token": settings.session_token,
        "connect_timeout": _CONNECT_TIMEOUT_S,
        "request_timeout": _REQUEST_TIMEOUT_S,
        "retry_strategy": pyarrow.fs.AwsStandardS3RetryStrategy(max_attempts=_READ_ATTEMPTS),
    }
    if settings.endpoint_url:
        # pyarrow ignores AWS_ENDPOINT_URL and wants "host:port" plus a separate scheme.
        parts = urlsplit(settings.endpoint_url)
        if not parts.netloc:
            raise DataSourceError(
                f"S3 endpoint {settings.endpoint_url!r} is not a URL like http://host:port"
            )
        options["endpoint_override"] = parts.netloc
        options["scheme"] = parts.scheme or "https"
    return pyarrow.fs.S3FileSystem(**options)


# One client per settings for the process (boto3 clients are thread-safe): a new session
# loads botocore's service data, costlier than the checks every stream built makes.
@functools.lru_cache(maxsize=8)
def _check_client(settings: S3Settings):
    import boto3
    from botocore.config import Config

    config = Config(
        connect_timeout=_CHECK_CONNECT_TIMEOUT_S,
        read_timeout=_CHECK_READ_TIMEOUT_S,
        retries={"max_attempts": _CHECK_MAX_ATTEMPTS},
        # Path-style requests work on every S3-compatible server (and match what pyarrow
        # does with an endpoint override); virtual hosts need DNS that local servers lack.
        s3={"addressing_style": "path"} if settings.endpoint_url else None,
    )
    return boto3.session.Session().client(
        "s3",
        endpoint_url=settings.endpoint_url,
        region_name=settings.region or DEFAULT_REGION,
        aws_access_key_id=settings.access_key,
        aws_secret_access_key=settings.secret_key,
        aws_session_token=settings.session_token,
        config=config,
    )


def _has_objects(client, bucket: str, key: str) -> bool:
    if not key:
        return client.list_objects_v2(Bucket=bucket, MaxKeys=1).get("KeyCount", 0) > 0
    # A prefix "folder" first (the trailing slash keeps "data" from matching "data2/..."),
    # then the key itself, which may name a single Parquet file.
    listed = client.list_objects_v2(Bucket=bucket, Prefix=f"{key}/", MaxKeys=1)
    if listed.get("KeyCount", 0) > 0:
        return True
    listed = client.list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1)
    return any(item["Key"] == key for item in listed.get("Contents", []))


def _client_error(uri: str, bucket: str, where: str, error: Exception) -> DataSourceError:
    response = getattr(error, "response", {}) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    if code in _MISSING_BUCKET_CODES:
        return DataSourceError(f"data source {uri!r}: bucket {bucket!r} does not exist at {where}")
    if code in _ACCESS_DENIED_CODES:
        return DataSourceError(
            f"data source {uri!r}: access denied to bucket {bucket!r} at {where} "
            f"({code}); check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN)"
        )
    message = response.get("Error", {}).get("Message", "") or str(error)
    return DataSourceError(f"data source {uri!r}: S3 error {code or '?'} at {where}: {message}")


def _check_local(uri: str, require_data: bool) -> None:
    _, path = filesystem_for(uri)
    if not require_data:
        return
    if not os.path.exists(path):
        raise DataSourceError(f"data source {uri!r}: path {path!r} does not exist")
    if os.path.isdir(path) and not any(os.scandir(path)):
        raise DataSourceError(f"data source {uri!r}: folder {path!r} is empty")


def _profile_region() -> str | None:
    """The region of the boto3 profile (AWS_PROFILE or default, from ~/.aws/config)."""
    try:
        import boto3

        return boto3.session.Session().region_name
    except Exception:  # a broken profile must not break local runs that never touch S3
        return None


def _profile_credentials() -> tuple[str | None, str | None, str | None]:
    try:
        import boto3

        credentials = boto3.session.Session().get_credentials()
    except Exception:  # a broken profile must not break local runs that never touch S3
        return None, None, None
    if credentials is None or credentials.method not in _STATIC_CREDENTIAL_METHODS:
        return None, None, None
    frozen = credentials.get_frozen_credentials()
    return frozen.access_key, frozen.secret_key, frozen.token
