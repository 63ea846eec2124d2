"""List pages are full whenever more objects follow: expired files are left out before the page
is cut, so `has_more` is honest and the SDK's auto-pagination sees every live file."""

from __future__ import annotations

import asyncio
import io
import time
import uuid

import asyncpg
import openai

from conftest import chat_line, jsonl
from eventbatch import events as ev, files as file_commands, ids


def expired_files(database_url: str, project: str, n: int) -> list[str]:
    """Files that expired a minute ago, recorded through the file command (the API cannot make
    one: its shortest expiry is an hour)."""
    async def go():
        conn = await asyncpg.connect(database_url)
        made = []
        try:
            for _ in range(n):
                fid = ids.file_id()
                async with conn.transaction():
                    await file_commands.create_file(conn, ev.FileCreated(
                        file_id=fid, project=project, filename="old.jsonl", purpose="batch", bytes=0,
                        at=time.time() - 7200, expires_at=int(time.time()) - 60))
                made.append(fid)
        finally:
            await conn.close()
        return made
    return asyncio.run(go())


def test_expired_files_never_shorten_a_page(server, new_key, database_url):
    project = f"proj-{uuid.uuid4().hex[:8]}"
    client = openai.OpenAI(base_url=server.base_url, api_key=new_key(project), max_retries=0)
    live = [client.files.create(file=(f"{i}.jsonl", io.BytesIO(jsonl([chat_line(i)]))), purpose="batch").id
            for i in range(3)]
    gone = expired_files(database_url, project, 5)   # newer than the live ones: first in a desc list
    page = client.files.list(limit=2)
    assert [f.id for f in page.data] == [live[2], live[1]] and page.has_more
    last = client.files.list(limit=2, after=live[1])
    assert [f.id for f in last.data] == [live[0]] and not last.has_more
    assert [f.id for f in client.files.list(limit=1)] == list(reversed(live))       # SDK auto-pagination
    assert [f.id for f in client.files.list(limit=2, order="asc")] == live
    # an expired file is as gone as a deleted one, and can still be paged after
    assert client.files.list(limit=2, after=gone[0], order="asc").data == []
