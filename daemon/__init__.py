"""hostscope's per-host daemon: aiohttp server, websocket stream, REST API, CLI."""
