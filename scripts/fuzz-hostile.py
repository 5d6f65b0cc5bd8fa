#!/usr/bin/env python3
"""Hostile strategies for scripts/fuzz-api.sh (issue 19), which schemathesis
does not generate: NUL bytes and invalid UTF-8 in path ids, query parameters
and body strings, malformed JSON documents (trailing data, arrays, scalars)
and extreme dates, on every operation of the server's own /openapi.json.

Usage: fuzz-hostile.py BASE_URL API_KEY. Checks on every answer: never a 5xx;
every 4xx is application/problem+json; a hostile path id is 404; a malformed
body, a NUL or invalid UTF-8 is never accepted (never 2xx); every time in a
2xx answer is RFC 3339 with a four-digit year. A payment provider's inbound
endpoint (`/v1/inbound/{provider}/{token}`) takes the provider's signed bytes
as they are, not a JSON document of ours: with a provider and token nobody
configured (`x`) any body is 404. Prints one line per failure
and a last line `hostile: <cases> cases, <failures> failures`; exits 1 on a
failure. Standard library only.
"""

import json
import re
import sys
import urllib.error
import urllib.parse
import urllib.request

BASE, KEY = sys.argv[1].rstrip("/"), sys.argv[2]

# Percent-encoded, as a client would put them in a URL.
HOSTILE_IDS = ["%00", "x%00y", "x%ff", "%c0%80", "%ed%a0%80", "%fe%ff"]
HOSTILE_QUERY = ["%00", "a%00b", "%ff", "x%c3"]
EXTREME_TIMES = [
    "0000-01-01T00:00:00Z",
    "9999-12-31T23:59:59Z",
    "+10000-01-01T00:00:00Z",
    "-0001-01-01T00:00:00Z",
    "1969-12-31T23:59:59Z",
]
MALFORMED_BODIES = [b"{}}", b"{} {}", b"[]", b"null", b'"x"', b"1", b"{\"a\":1}}", b"{"]
TIME_RE = re.compile(r"^[+-]?\d{4,}-\d{2}-\d{2}T\d{2}:\d{2}")
FOUR_DIGIT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")

cases = 0
failures = []


def call(method, path, body=None):
    global cases
    cases += 1
    req = urllib.request.Request(BASE + path, method=method, data=body)
    req.add_header("Authorization", "Bearer " + KEY)
    if body is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=15) as r:
            return r.status, r.headers.get("content-type", ""), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("content-type", ""), e.read()
    except Exception as e:  # a dropped connection is a failure too
        return 0, "", str(e).encode()


def fail(what, method, path, status, detail=""):
    failures.append(f"{what}: {method} {path} -> {status} {detail[:200]}")


def check(method, path, status, ctype, body, must_refuse, want=None):
    if status == 0 or status >= 500:
        fail("server error", method, path, status, body.decode("utf-8", "replace"))
        return
    if status >= 400 and not ctype.startswith("application/problem+json"):
        fail("not problem+json", method, path, status, ctype)
    if want is not None and status != want:
        fail(f"want {want}", method, path, status, body.decode("utf-8", "replace"))
    elif must_refuse and 200 <= status < 300:
        fail("accepted", method, path, status, body.decode("utf-8", "replace"))
    if 200 <= status < 300 and ctype.startswith("application/json"):
        try:
            walk_times(json.loads(body), method, path)
        except ValueError:
            fail("bad JSON", method, path, status)


def walk_times(v, method, path):
    if isinstance(v, str):
        if TIME_RE.match(v) and not FOUR_DIGIT.match(v):
            fail("time without a four-digit year", method, path, 200, v)
    elif isinstance(v, list):
        for x in v:
            walk_times(x, method, path)
    elif isinstance(v, dict):
        for x in v.values():
            walk_times(x, method, path)


def resolve(doc, schema):
    while isinstance(schema, dict) and "$ref" in schema:
        name = schema["$ref"].split("/")[-1]
        schema = doc["components"]["schemas"][name]
    return schema or {}


def sample(doc, schema, depth=0):
    """A plausible value of a schema: required fields only."""
    schema = resolve(doc, schema)
    for key in ("oneOf", "anyOf", "allOf"):
        if key in schema and schema[key]:
            return sample(doc, schema[key][0], depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    if kind == "object" or "properties" in schema:
        if depth > 4:
            return {}
        props = schema.get("properties", {})
        return {k: sample(doc, props[k], depth + 1) for k in schema.get("required", []) if k in props}
    if kind == "array":
        return []
    if kind == "integer":
        return 1
    if kind == "number":
        return 1
    if kind == "boolean":
        return False
    if "enum" in schema:
        return schema["enum"][0]
    return "x"


def is_time_field(name):
    return name in ("at", "timestamp", "from", "to", "by") or name.endswith("_at")


def string_fields(doc, schema):
    schema = resolve(doc, schema)
    out = []
    for name, prop in schema.get("properties", {}).items():
        prop = resolve(doc, prop)
        kinds = prop.get("type")
        kinds = kinds if isinstance(kinds, list) else [kinds]
        if "string" in kinds and "enum" not in prop:
            out.append(name)
    return out


def main():
    with urllib.request.urlopen(BASE + "/openapi.json", timeout=15) as r:
        doc = json.load(r)
    for path, item in sorted(doc["paths"].items()):
        if not path.startswith("/v1/") or path.startswith("/v1/admin/clock"):
            continue
        for method in ("get", "post", "put", "delete", "patch"):
            op = item.get(method)
            if not op:
                continue
            m = method.upper()
            names = re.findall(r"\{([^}]+)\}", path)
            plain = re.sub(r"\{[^}]+\}", "x", path)
            body_schema = (
                op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            )
            body = json.dumps(sample(doc, body_schema)).encode() if body_schema else None
            # Hostile ids in each path parameter: nothing is named, 404.
            for name in names:
                for bad in HOSTILE_IDS:
                    p = path.replace("{" + name + "}", bad)
                    p = re.sub(r"\{[^}]+\}", "x", p)
                    status, ctype, out = call(m, p, body if m in ("POST", "PUT") else None)
                    check(m, p, status, ctype, out, True, want=404)
            # Hostile query values: NUL and invalid UTF-8 are 422.
            for param in op.get("parameters", []):
                if param.get("in") != "query":
                    continue
                for bad in HOSTILE_QUERY:
                    p = f"{plain}?{param['name']}={bad}"
                    status, ctype, out = call(m, p)
                    check(m, p, status, ctype, out, True, want=422)
                for t in EXTREME_TIMES if is_time_field(param["name"]) else []:
                    p = f"{plain}?{param['name']}={urllib.parse.quote(t)}"
                    status, ctype, out = call(m, p)
                    check(m, p, status, ctype, out, False)
            if m not in ("POST", "PUT"):
                continue
            # Malformed documents are never applied.
            inbound = path.startswith("/v1/inbound/")
            for bad in MALFORMED_BODIES:
                status, ctype, out = call(m, plain, bad)
                check(m, plain, status, ctype, out, True, want=404 if inbound else 422)
            if not body_schema:
                continue
            base = sample(doc, body_schema)
            if not isinstance(base, dict):
                continue
            for field in string_fields(doc, body_schema):
                # A NUL in any text field is refused.
                for bad in ["\u0000", "a\u0000b"]:
                    doc_body = dict(base, **{field: bad})
                    status, ctype, out = call(m, plain, json.dumps(doc_body).encode())
                    check(m, plain, status, ctype, out, True)
                # Extreme times never make the server fail or write a
                # year outside 0000-9999 (walk_times on a 2xx).
                if not is_time_field(field):
                    continue
                for t in EXTREME_TIMES:
                    doc_body = dict(base, **{field: t})
                    status, ctype, out = call(m, plain, json.dumps(doc_body).encode())
                    check(m, plain, status, ctype, out, False)
    for f in failures:
        print("hostile: " + f)
    print(f"hostile: {cases} cases, {len(failures)} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
