"""Schemathesis hooks for the run against the native host (.ci/schemathesis.sh).

Spin refuses a request with a header value that is not valid UTF-8 itself,
with an empty 500, before any component runs (README, "What only Spin
showed"); the native host answers such requests the same way, so that what is
tested is what is deployed. Those answers are the runtime's, not the API's,
and openapi.yaml says so: only they are not counted as failures. Every other
answer to such a request, and every other 500, still counts.
"""

import schemathesis


def _not_utf8(value) -> bool:
    # http.client sends str header values encoded as Latin-1.
    raw = value if isinstance(value, bytes) else str(value).encode("latin-1", errors="strict")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


@schemathesis.hook
def filter_failure(context, failure, case, response):
    refused_by_runtime = (
        response.status_code == 500
        and not response.content
        and any(_not_utf8(v) for v in response.request.headers.values())
    )
    return not refused_by_runtime
