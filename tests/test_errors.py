"""What is worth another try: transient storage and cluster errors are retried in process, refusals never."""

import pytest

from shoprank.errors import DataValidationError, PlanError, SourceError, is_transient, retry_transient


def _client_errors() -> list[tuple[BaseException, bool]]:
    """Real exceptions of the clients the ingest and promote steps use, and whether another try may help."""
    from botocore.exceptions import ClientError, EndpointConnectionError
    from google.api_core import exceptions as gexc
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import MaxRetryError, NewConnectionError, ProtocolError

    def s3(status: int) -> ClientError:
        return ClientError({"Error": {"Code": str(status), "Message": "x"},
                            "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")

    return [
        (ApiException(status=503, reason="Service Unavailable"), True),
        (ApiException(status=429, reason="Too Many Requests"), True),
        (ApiException(status=404, reason="Not Found"), False),
        (ApiException(status=422, reason="Unprocessable Entity"), False),
        (MaxRetryError(None, "https://api:6443/apis", reason="refused"), True),
        (NewConnectionError(None, "connection refused"), True),
        (ProtocolError("Connection aborted."), True),
        (EndpointConnectionError(endpoint_url="https://s3.example"), True),
        (s3(503), True),
        (s3(403), False),
        (gexc.ServiceUnavailable("backend"), True),
        (gexc.NotFound("no bucket"), False),
    ]


@pytest.mark.parametrize("exc, transient", [
    (DataValidationError("events: 40% of rows are bad"), False),
    (SourceError("events.csv: the file is empty"), False),
    (PlanError("the mode cannot change"), False),
    (ValueError("deploy_target must be 'local' or 'kserve'"), False),
    (KeyError("auc"), False),
    (ConnectionResetError("reset by peer"), True),
    (TimeoutError("timed out"), True),
    (OSError("AWS Error NETWORK_CONNECTION during GetObject operation"), True),  # pyarrow's S3 errors
    (FileNotFoundError("no such file"), False),
    (PermissionError("denied"), False),
])
def test_is_transient(exc, transient):
    assert is_transient(exc) is transient


def test_client_library_errors():
    for exc, transient in _client_errors():
        assert is_transient(exc) is transient, repr(exc)


def test_the_cause_of_a_wrapped_error_counts():
    try:
        try:
            raise ConnectionResetError("reset")
        except ConnectionResetError as inner:
            raise RuntimeError("upload failed") from inner
    except RuntimeError as outer:
        assert is_transient(outer)
    assert not is_transient(RuntimeError("a bug"))


def test_retry_transient_tries_again_with_backoff_then_succeeds():
    calls, waits, lines = [], [], []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionResetError("reset by peer")
        return "done"

    assert retry_transient(flaky, attempts=3, first_delay_s=2, what="ingest", log=lines.append,
                           sleep=waits.append) == "done"
    assert len(calls) == 3 and waits == [2, 4]
    assert lines[0] == "[ingest] transient error (ConnectionResetError: reset by peer); try 2 of 3 in 2s"


def test_retry_transient_fails_a_refusal_at_once_and_gives_up_after_the_last_try():
    calls = []

    def refused() -> None:
        calls.append(1)
        raise DataValidationError("impressions: 12 of 20 rows are bad")

    with pytest.raises(DataValidationError, match="12 of 20"):
        retry_transient(refused, sleep=lambda s: None, log=lambda s: None)
    assert len(calls) == 1

    def down() -> None:
        calls.append(1)
        raise TimeoutError("read timed out")

    calls.clear()
    with pytest.raises(TimeoutError):
        retry_transient(down, attempts=3, sleep=lambda s: None, log=lambda s: None)
    assert len(calls) == 3
