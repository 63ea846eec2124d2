"""GET /dashboard: the web page of SPEC section 13, plain files from eventbatch/dashboard/.

The page holds no key and no tenant data: the user pastes a key, the page's script keeps it in
the tab's sessionStorage and calls /v1 with it. A strict Content-Security-Policy allows only the
page's own script and style files and calls to this origin: no inline code, nothing from
elsewhere, no framing."""

from __future__ import annotations

from importlib import resources

from aiohttp import web

from .errors import ApiError

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
    "Cross-Origin-Opener-Policy": "same-origin",
}
ASSETS = {"index.html": "text/html", "dashboard.js": "text/javascript", "dashboard.css": "text/css",
          "favicon.svg": "image/svg+xml"}


def _read_assets() -> dict[str, bytes]:
    folder = resources.files("eventbatch") / "dashboard"
    return {name: (folder / name).read_bytes() for name in ASSETS}


def add_routes(app: web.Application) -> None:
    files = _read_assets()   # read once: a missing file fails at start, not at the first visit

    def answer(name: str) -> web.Response:
        return web.Response(body=files[name], content_type=ASSETS[name], charset="utf-8", headers=HEADERS)

    async def page(request: web.Request) -> web.Response:
        return answer("index.html")

    async def asset(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in files or name == "index.html":
            raise ApiError(404, f"No dashboard file '{name[:60]}'; the dashboard is at /dashboard.")
        return answer(name)

    app.router.add_get("/dashboard", page)
    app.router.add_get("/dashboard/", page)
    app.router.add_get("/dashboard/{name}", asset)
