"""The ceiling a user could write by hand: asyncio + aiohttp sending every line of a batch input
file to the provider at a fixed concurrency and writing the answers as JSONL. No durability, no
retries, no accounting: what eventbatch is measured against."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aiohttp


async def run_plain(lines: list[dict], base_url: str, concurrency: int, out_path: Path,
                    api_key: str | None = None) -> float:
    """Send every request; return requests per second."""
    sem = asyncio.Semaphore(concurrency)
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    results: list[bytes] = []
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(line: dict) -> None:
            async with sem:
                async with session.post(base_url + line["url"].removeprefix("/v1"), data=json.dumps(line["body"]),
                                        headers=headers) as r:
                    body = await r.read()
                    results.append(b'{"custom_id":"%s","status_code":%d,"body":%s}\n'
                                   % (line["custom_id"].encode(), r.status, body))

        t0 = time.perf_counter()
        await asyncio.gather(*(one(x) for x in lines))
        out_path.write_bytes(b"".join(results))
        elapsed = time.perf_counter() - t0
    return len(lines) / elapsed
