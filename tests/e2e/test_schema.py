"""Our responses validate against OpenAI's published schemas (shared/reference)."""

from __future__ import annotations

import io
import json
import urllib.request

import pytest
from openapi_schema_validator import OAS31Validator

from conftest import ROOT, jsonl, slow_line, wait_status

# A verbatim copy of shared/reference/openai-batch-files.openapi.json, so a clone tests alone;
# test_reference_copy_is_unchanged keeps the two equal where shared/ is beside the clone.
SPEC_PATH = ROOT / "tests" / "reference" / "openai-batch-files.openapi.json"
SHARED_SPEC = ROOT.parent / "shared" / "reference" / "openai-batch-files.openapi.json"


def test_reference_copy_is_unchanged():
    if not SHARED_SPEC.exists():
        pytest.skip("shared/ is not beside this clone")
    assert SPEC_PATH.read_bytes() == SHARED_SPEC.read_bytes()


@pytest.fixture(scope="module")
def spec():
    return json.loads(SPEC_PATH.read_text())


def drop_nulls_of_optional(obj, schema, spec):
    """OpenAI answers null for an optional field not reached yet (e.g. `completed_at`), while the
    published schema types those fields without null; the SDK models them as Optional. Treat a
    null in a field that is not required as absent, and nothing else."""
    if "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    if isinstance(obj, dict) and "properties" in schema:
        required = set(schema.get("required", []))
        out = {}
        for k, v in obj.items():
            if v is None and k not in required:
                continue
            sub = schema["properties"].get(k, {})
            out[k] = drop_nulls_of_optional(v, sub, spec)
        return out
    if isinstance(obj, list) and "items" in schema:
        return [drop_nulls_of_optional(x, schema["items"], spec) for x in obj]
    return obj


def check(spec, name, obj):
    schema = {**spec["components"]["schemas"][name], "components": spec["components"]}
    OAS31Validator(schema).validate(drop_nulls_of_optional(obj, spec["components"]["schemas"][name], spec))


def raw(server, key, method, path, body=None):
    req = urllib.request.Request(server.base_url + path, method=method, data=body,
                                 headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        return json.loads(r.read())


def test_batch_and_file_objects_match_openai_schema(spec, server, new_key, client):
    key = client.api_key
    f = client.files.create(file=("in.jsonl", io.BytesIO(jsonl([slow_line(1), slow_line(2)]))), purpose="batch")
    check(spec, "OpenAIFile", raw(server, key, "GET", f"/files/{f.id}"))
    files = raw(server, key, "GET", "/files")
    check(spec, "ListFilesResponse", files)
    created = raw(server, key, "POST", "/batches", json.dumps(
        {"input_file_id": f.id, "endpoint": "/v1/chat/completions", "completion_window": "24h",
         "metadata": {"a": "b"}}).encode())
    check(spec, "Batch", created)
    # every field of the batch object is present, null where not reached, and the extension
    # fields of SPEC §12 besides (OpenAI's schema allows properties it does not list)
    assert set(created) == set(spec["components"]["schemas"]["Batch"]["properties"]) | {"retry_of"}
    assert spec["components"]["schemas"]["Batch"].get("additionalProperties", True) is not False
    assert created["completed_at"] is None and created["output_file_id"] is None and created["retry_of"] is None
    wait_status(client, created["id"], {"in_progress"})
    cancelled = raw(server, key, "POST", f"/batches/{created['id']}/cancel")
    check(spec, "Batch", cancelled)
    wait_status(client, created["id"], {"cancelled"})
    done = raw(server, key, "GET", f"/batches/{created['id']}")
    check(spec, "Batch", done)
    check(spec, "OpenAIFile", raw(server, key, "GET", f"/files/{done['error_file_id']}"))
    check(spec, "ListBatchesResponse", raw(server, key, "GET", "/batches"))
    check(spec, "DeleteFileResponse", raw(server, key, "DELETE", f"/files/{f.id}"))
    # a failed validation's errors are BatchError objects
    bad = client.files.create(file=("bad.jsonl", io.BytesIO(b"{nope\n")), purpose="batch")
    b = client.batches.create(input_file_id=bad.id, endpoint="/v1/chat/completions", completion_window="24h")
    wait_status(client, b.id, {"failed"})
    failed = raw(server, key, "GET", f"/batches/{b.id}")
    check(spec, "Batch", failed)
    assert failed["errors"]["data"][0] == {"code": "invalid_json_line", "line": 1, "param": None,
                                           "message": failed["errors"]["data"][0]["message"]}
