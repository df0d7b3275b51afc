"""An MCP client from the official Python SDK (PyPI `mcp`) driving `warren mcp` over stdio.

Usage: client.py stdio WARREN STATE_DIR WORKSPACE, or client.py http URL TOKEN WORKSPACE (the
daemon's /mcp over Streamable HTTP, with its bearer token). Prints one JSON object with what it
saw; the Rust test (tests/suite/mcp.rs) checks it. Every step is a real MCP request:
initialize, tools/list, tools/call with a progress token, structured results.
"""

import asyncio
import contextlib
import json
import sys

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import create_mcp_http_client, streamable_http_client


async def main(mode: str, where: str, secret: str, workspace: str) -> None:
    seen: dict = {}
    async with contextlib.AsyncExitStack() as stack:
        if mode == "stdio":
            params = StdioServerParameters(command=where, args=["--state-dir", secret, "mcp"])
            streams = await stack.enter_async_context(stdio_client(params))
        else:
            http = create_mcp_http_client(headers={"Authorization": f"Bearer {secret}"})
            await stack.enter_async_context(http)
            streams = await stack.enter_async_context(
                streamable_http_client(where, http_client=http)
            )
        read, write = streams[0], streams[1]
        async with ClientSession(read, write) as session:
            init = await session.initialize()
            seen["server"] = init.server_info.name
            seen["protocol"] = init.protocol_version
            listed = await session.list_tools()
            seen["tools"] = sorted(t.name for t in listed.tools)
            agents = await session.call_tool("list_agents", {})
            seen["agents"] = [a["name"] for a in agents.structured_content["agents"]]
            submitted = await session.call_tool(
                "submit_task",
                {"agent": "coder", "goal": "write hello.txt", "workspace": workspace},
            )
            task = submitted.structured_content["id"]
            seen["submitted_state"] = submitted.structured_content["state"]
            progress = []

            async def on_progress(value, total, message):
                progress.append(message)

            done = await session.call_tool(
                "wait_task",
                {"id": task, "timeout_seconds": 120},
                progress_callback=on_progress,
            )
            seen["final"] = done.structured_content
            seen["progress"] = progress
            result = await session.call_tool("task_result", {"id": task})
            seen["result"] = result.structured_content
            diff = await session.call_tool("task_diff", {"id": task})
            seen["diff"] = diff.structured_content
            resource = await session.read_resource(f"warren://tasks/{task}/diff")
            seen["diff_resource"] = resource.contents[0].text
            missing = await session.call_tool("task_status", {"id": "t000000000000"})
            seen["missing"] = {"is_error": missing.is_error, "content": missing.structured_content}
    print(json.dumps(seen))


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
