"""Signs a webhook with the PyPI `standardwebhooks` package.

Reads one JSON object from stdin:
    {"secret": "whsec_...", "id": "msg_...", "timestamp": 1700000000, "body": "..."}
and prints the `webhook-signature` header value (`v1,<base64>`) that the
package computes. The HMAC is deliberately not computed here: the point is an
implementation independent of the project's own code.

Used by tests/tests/ingest_independent_signer.rs; requirements in
requirements.txt next to this file.
"""

import json
import sys
from datetime import datetime, timezone

from standardwebhooks.webhooks import Webhook


def main() -> int:
    try:
        # Bytes, so the body's UTF-8 does not depend on the locale's encoding.
        request = json.loads(sys.stdin.buffer.read())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        print(f"sign_webhook.py: stdin is not JSON: {e}", file=sys.stderr)
        return 2
    if not isinstance(request, dict):
        print("sign_webhook.py: stdin must be a JSON object", file=sys.stderr)
        return 2
    expected = {
        "secret": (str, "a string"),
        "id": (str, "a string"),
        "timestamp": (int, "an integer"),
        "body": (str, "a string"),
    }
    for key, (kind, description) in expected.items():
        value = request.get(key)
        # bool is a subclass of int: refuse it as a timestamp.
        if not isinstance(value, kind) or isinstance(value, bool):
            print(f"sign_webhook.py: field {key!r} must be {description}", file=sys.stderr)
            return 2
    unknown = sorted(set(request) - set(expected))
    if unknown:
        print(f"sign_webhook.py: unknown fields {unknown}", file=sys.stderr)
        return 2

    # The package formats the timestamp of an aware UTC datetime as Unix seconds.
    timestamp = datetime.fromtimestamp(request["timestamp"], tz=timezone.utc)
    signature = Webhook(request["secret"]).sign(request["id"], timestamp, request["body"])
    print(signature)
    return 0


if __name__ == "__main__":
    sys.exit(main())
