"""Schemathesis hooks for scripts/api-conformance.

The OpenAPI document states every rule JSON Schema (and OpenAPI's multipart encoding, for the
image types an upload takes) can state. Some rules are beyond it, and a request the schema allows
can break them: a flash sale's `ends_at` must come after its `starts_at` and be in the future, a
coupon's `ends_at` must come after its `starts_at`, an upload's bytes must be an image of the
declared types (schemathesis sends such an image in some phases, random bytes in fuzzing), and a
webhook's URL must parse and name a public host. The document says these rules in the fields'
descriptions; here the generator is taught them: only a well-formed `ends_at` is moved, to
another well-formed time, only bytes are replaced, by an image's bytes, and only a URL the
schema allows is replaced, by a public one, so a body that breaks the schema still breaks it the
same way. Every check runs
with its default settings.
"""

import re
from datetime import datetime, timedelta, timezone

import schemathesis

SALES = "POST /api/v1/admin/flash-sales"
COUPONS = "POST /api/v1/admin/coupons"
UPLOAD = "POST /api/v1/admin/uploads"
WEBHOOKS = ("POST /api/v1/admin/webhooks", "PATCH /api/v1/admin/webhooks/{id}")
WEBHOOK_URL = re.compile(r"^[Hh][Tt][Tt][Pp][Ss]?://")
PUBLIC_URL = "https://hooks.example.com/flashmart"

# The smallest well-formed PNG: a 1x1 transparent pixel.
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"
    "0000000b49444154789c6360000200000500017a5eab3f0000000049454e44ae426082"
)
SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"RIFF")

# RFC 3339 date-time, as the schema's `format: date-time` means it.
RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$"
)


def _parse(value):
    if not isinstance(value, str) or not RFC3339.match(value):
        return None
    text = re.sub(r"(\.\d{6})\d+", r"\1", value.upper().replace("Z", "+00:00"))
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _image(value):
    """`value` if it is no bytes or an image already; else an image, of the same type."""
    data = getattr(value, "data", value)
    if not isinstance(data, bytes) or data.startswith(SIGNATURES):
        return value
    return type(value)(PNG)


def keep_rules(label, body):
    """`body` with the rules kept. A body that needs no change is returned as it is (the same
    object: schemathesis takes a changed body for a mutation), one that does as a new dict
    (generated bodies can be shared between cases)."""
    if not isinstance(body, dict):
        return body
    if label == UPLOAD:
        if "file" not in body:
            return body
        image = _image(body["file"])
        return body if image is body["file"] else {**body, "file": image}
    if label in WEBHOOKS:
        url = body.get("url")
        if not isinstance(url, str) or not WEBHOOK_URL.match(url) or len(url) > 2048:
            return body
        return body if url == PUBLIC_URL else {**body, "url": PUBLIC_URL}
    if label not in (SALES, COUPONS):
        return body
    ends = _parse(body.get("ends_at"))
    if ends is None:
        return body
    now = datetime.now(timezone.utc)
    starts = _parse(body.get("starts_at")) if "starts_at" in body else now
    if starts is None:
        return body
    floor = max(starts, now) if label == SALES else starts
    if ends > floor:
        return body
    try:
        return {**body, "ends_at": _rfc3339(floor + timedelta(days=1))}
    except OverflowError:
        return body


@schemathesis.hook
def map_body(context, body):
    # Fuzzing: bodies come here without their generation mode; the changes leave a broken body
    # broken.
    if context.operation is None:
        return body
    return keep_rules(context.operation.label, body)


def _keep_in(case):
    kept = keep_rules(case.operation.label, case.body)
    if kept is not case.body:
        case.body = kept
        # The kept body is the case as generated, not an edit of it (schemathesis would
        # revalidate an edited body). Pinned: schemathesis 4.32.5.
        case._record_starting_state()


@schemathesis.hook
def map_case(context, case):
    # Coverage: a case knows its mode. Schemathesis also makes "negative" cases whose body is
    # valid and expects them refused; those are left exactly as generated.
    if case.meta is not None and case.meta.generation.mode.is_positive:
        _keep_in(case)
    return case


@schemathesis.hook
def before_add_examples(context, examples):
    for case in examples:
        if case.meta is None or case.meta.generation.mode.is_positive:
            _keep_in(case)
