"""Plain HTTP to an `mlflow server`: the session mimray's reads and its report upload share.

It honours MLflow's settings for reaching a server (MLFLOW_TRACKING_TOKEN, _USERNAME/_PASSWORD,
_INSECURE_TLS, _SERVER_CERT_PATH, _CLIENT_CERT_PATH) and retries transient failures as MLflow's
client does, and answers cut off mid-body; with other settings (an auth plugin, SigV4)
`usable` says no and callers go through MLflow's client instead.
"""

from __future__ import annotations

import functools
import os
import time
from typing import Any

TRANSIENT_STATUS = (408, 429, 500, 502, 503, 504)  # what MLflow's client retries
UNSUPPORTED_SETTINGS = ("MLFLOW_TRACKING_AUTH", "MLFLOW_TRACKING_AWS_SIGV4")
# Times an answer cut off mid-body is asked again (with backoff), beyond urllib3's retries.
CUT_ANSWER_RETRIES = 4


def usable(tracking_uri: str) -> bool:
    """Whether plain HTTP can reach the store at `tracking_uri` as MLflow's client would."""
    is_http = tracking_uri.startswith(("http://", "https://"))
    return is_http and not any(os.environ.get(name) for name in UNSUPPORTED_SETTINGS)


def server_session(connections: int = 1) -> Any:
    """A `requests.Session` with MLflow's credentials, TLS settings and retries, keeping up to
    `connections` connections open (one per request in flight)."""
    import requests
    from urllib3.util.retry import Retry

    session = requests.Session()
    # Transient failures are retried with backoff, as MLflow's client does (every method:
    # reads, and uploads that replace a file whole).
    retry = Retry(
        total=5,
        backoff_factor=0.5,
        status_forcelist=TRANSIENT_STATUS,
        allowed_methods=None,
        raise_on_status=False,
    )
    adapter = _whole_answer_adapter()(
        pool_connections=1, pool_maxsize=connections, max_retries=retry
    )
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    env = os.environ
    if env.get("MLFLOW_TRACKING_TOKEN"):
        session.headers["Authorization"] = f"Bearer {env['MLFLOW_TRACKING_TOKEN']}"
    elif env.get("MLFLOW_TRACKING_USERNAME"):
        session.auth = (env["MLFLOW_TRACKING_USERNAME"], env.get("MLFLOW_TRACKING_PASSWORD", ""))
    if env.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
        session.verify = False
    elif env.get("MLFLOW_TRACKING_SERVER_CERT_PATH"):
        session.verify = env["MLFLOW_TRACKING_SERVER_CERT_PATH"]
    if env.get("MLFLOW_TRACKING_CLIENT_CERT_PATH"):
        session.cert = env["MLFLOW_TRACKING_CLIENT_CERT_PATH"]
    return session


@functools.cache
def _whole_answer_adapter() -> type:
    """An `HTTPAdapter` that reads each answer's body itself and sends the request again, up
    to `CUT_ANSWER_RETRIES` times, when the body comes cut off (a server worker restarted, a
    proxy's timeout). urllib3's retries end once an answer's headers have come, and `requests`
    reads the body only after them. Every request of this session may be sent again: reads,
    and uploads that replace a file whole."""
    from requests.adapters import HTTPAdapter
    from requests.exceptions import ChunkedEncodingError

    class WholeAnswerAdapter(HTTPAdapter):
        def send(self, request: Any, **options: Any) -> Any:
            for attempt in range(CUT_ANSWER_RETRIES):
                response = super().send(request, **options)
                if options.get("stream"):
                    return response
                try:
                    response.content  # noqa: B018 - read here, where it can be asked again
                    return response
                except ChunkedEncodingError:
                    time.sleep(0.25 * 2**attempt)
            return super().send(request, **options)

    return WholeAnswerAdapter
