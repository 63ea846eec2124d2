"""SPEC section 6's invariants for a batch in a terminal state, checked from the outside
(files through the API) and the inside (the log)."""

from __future__ import annotations

import json

from eventbatch import batch as domain, events as ev, projections


def assert_invariants(client, db, batch_id: str, input_custom_ids: list[str]) -> tuple[list[dict], list[dict]]:
    b = client.batches.retrieve(batch_id)
    assert b.status in ("completed", "expired", "cancelled", "failed"), b.status
    files = {fid: client.files.content(fid).read() for fid in (b.output_file_id, b.error_file_id) if fid}
    for fid, content in files.items():
        assert client.files.retrieve(fid).bytes == len(content), "a file's bytes differ from its content"
    out = [json.loads(x) for x in files[b.output_file_id].splitlines()] if b.output_file_id else []
    err = [json.loads(x) for x in files[b.error_file_id].splitlines()] if b.error_file_id else []
    # 1. each input custom_id exactly once across output + error file
    seen = [x["custom_id"] for x in out + err]
    assert len(seen) == len(set(seen)), "a custom_id appears twice"
    assert sorted(seen) == sorted(input_custom_ids)
    # 2. counts
    rc = b.request_counts
    assert rc.completed == len(out) and rc.failed == len(err) and rc.completed + rc.failed == rc.total
    assert rc.total == len(input_custom_ids)
    # 3. one terminal event per request, nothing after the batch's terminal event
    rows = db.fetch("SELECT position, type, data, request_index FROM events WHERE batch_id = $1 ORDER BY position",
                    batch_id)
    indexes = [r["request_index"] for r in rows if r["request_index"] is not None]
    assert len(indexes) == len(set(indexes)) == rc.total
    assert rows[-1]["type"] == f"batch_{b.status}", [r["type"] for r in rows[-3:]]
    # 4. the view equals a fresh fold of the log
    state = domain.fold(None, [ev.decode(r["data"]) for r in rows])
    view = projections.decode_batch(db.fetchval("SELECT doc FROM batch_view WHERE id = $1", batch_id))
    assert view == state
    # the files are derived from the log: materialising them again gives the same lines
    from eventbatch.result_lines import output_line
    outcomes = sorted((ev.decode(r["data"]) for r in rows if r["request_index"] is not None), key=lambda o: o.index)
    again_out = [json.loads(output_line(batch_id, o)) for o in outcomes if isinstance(o, ev.RequestSucceeded)]
    again_err = [json.loads(output_line(batch_id, o)) for o in outcomes if isinstance(o, ev.RequestFailed)]
    assert again_out == out and again_err == err
    return out, err
