"""The rating page: a standard-library threaded HTTP server with plain HTML forms.

The standard library is enough for a handful of form pages and it keeps the study instrument
free of web dependencies (the project's web app is an optional extra; a reader study should run
wherever the package does). The server reads only study.json, images/ and the ratings database,
never the key, so no page or response can name a system.

Routes: ``GET /`` start page (name, optional resume code) or on to the next case; ``POST /start``;
``GET /case?n=K`` the reader's K-th case (1-based, in their own order; default: the first not yet
rated); ``POST /rate``; ``GET /image/<case id>.png``; ``GET /stop`` (saved, resume code);
``GET /logout``.
"""

from __future__ import annotations

import html
import http.cookies
import http.server
import pathlib
import re
import urllib.parse

from mavilt_jax.reader_study import store as store_lib
from mavilt_jax.reader_study import study as study_lib

COOKIE = "reader_token"
_STYLE = """body{font-family:sans-serif;max-width:70em;margin:1em auto;padding:0 1em;color:#222}
.case{display:flex;gap:2em;align-items:flex-start}.case img{max-width:512px;width:100%;background:#000}
.text{white-space:pre-wrap;border:1px solid #ccc;padding:1em;max-width:40em;background:#fafafa}
.scale label{margin-right:1.2em}.error{color:#b00}nav a{margin-right:1em}textarea{width:100%}"""


def _page(title: str, body: str) -> bytes:
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body>{body}</body></html>").encode()


def _start_page(error: str = "") -> bytes:
    err = f"<p class=error>{html.escape(error)}</p>" if error else ""
    return _page("Reader study", f"""<h1>Reader study</h1>{err}
<p>You will rate radiology reports and chest radiographs from 1 (poor) to 5 (excellent). The source of
each case is hidden. You can stop at any time and continue later.</p>
<form method=post action=/start><p><label>Your name <input name=name id=name required maxlength=80></label></p>
<p><label>Resume code (only to continue in another browser) <input name=code id=code></label></p>
<p><button type=submit id=start>Start</button></p></form>""")


class Handler(http.server.BaseHTTPRequestHandler):
    study: dict
    cases: dict[str, dict]
    store: store_lib.Store
    images: pathlib.Path
    server_version = "ReaderStudy"
    sys_version = ""

    def log_message(self, format, *args):  # noqa: A002  (http.server's signature)
        """Writes nothing: the ratings database is the record; no access log of readers' requests."""

    def _send(self, status: int, body: bytes, content_type: str = "text/html; charset=utf-8",
              headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, location: str, headers: dict | None = None) -> None:
        self._send(303, b"", headers={"Location": location, **(headers or {})})

    def _token(self) -> str | None:
        try:
            cookie = http.cookies.SimpleCookie(self.headers.get("Cookie", ""))
        except http.cookies.CookieError:
            return None
        return cookie[COOKIE].value if COOKIE in cookie else None

    def _reader(self) -> dict | None:
        return self.store.reader(self._token())

    def _form(self) -> dict[str, str]:
        length = min(int(self.headers.get("Content-Length") or 0), 64_000)
        data = urllib.parse.parse_qs(self.rfile.read(length).decode("utf-8", "replace"))
        return {k: v[0] for k, v in data.items()}

    def do_GET(self) -> None:  # noqa: N802  (http.server's name)
        url = urllib.parse.urlsplit(self.path)
        reader = self._reader()
        if url.path == "/":
            return self._redirect("/case") if reader else self._send(200, _start_page())
        if url.path == "/logout":
            return self._redirect("/", {"Set-Cookie": f"{COOKIE}=; Max-Age=0; Path=/; HttpOnly; SameSite=Strict"})
        if reader is None:
            return self._redirect("/")
        if url.path == "/case":
            query = urllib.parse.parse_qs(url.query)
            return self._case(reader, query.get("n", [""])[0])
        if url.path == "/stop":
            token = html.escape(self._token() or "")
            return self._send(200, _page("Saved", f"""<h1>Your ratings are saved</h1>
<p>Come back to this page in this browser to continue, or enter your name and the resume code
<code id=resume>{token}</code> on the start page of another browser.</p><p><a href=/case>Continue</a></p>"""))
        m = re.fullmatch(r"/image/(c[0-9a-f]{10})\.png", url.path)
        if m and m.group(1) in self.cases:
            return self._send(200, (self.images / f"{m.group(1)}.png").read_bytes(), "image/png")
        self._send(404, _page("Not found", "<p>Not found. <a href=/>Start page</a></p>"))

    def do_POST(self) -> None:  # noqa: N802
        path = urllib.parse.urlsplit(self.path).path
        form = self._form()
        if path == "/start":
            try:
                token = self.store.register(form.get("name", ""), form.get("code", ""))
            except ValueError as e:  # NameTaken included
                return self._send(403 if isinstance(e, store_lib.NameTaken) else 400, _start_page(str(e)))
            return self._redirect("/case", {"Set-Cookie": f"{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict"})
        if path == "/rate":
            reader = self._reader()
            if reader is None:
                return self._redirect("/")
            case = self.cases.get(form.get("case_id", ""))
            score = form.get("score", "")
            if case is None or score not in {"1", "2", "3", "4", "5"}:
                return self._send(400, _page("Not saved", "<p class=error>Choose a rating from 1 to 5.</p>"
                                              "<p><a href='javascript:history.back()'>Back</a></p>"))
            self.store.rate(reader["reader_id"], case["case_id"], case["kind"], int(score), form.get("comment", ""))
            n = reader["order"].index(case["case_id"]) + 1
            return self._redirect(f"/case?n={n + 1}" if n < len(reader["order"]) else "/case")
        self._send(404, _page("Not found", "<p>Not found.</p>"))

    def _case(self, reader: dict, n: str) -> None:
        order, mine = reader["order"], self.store.ratings_of(reader["reader_id"])
        if n.isdigit() and 1 <= int(n) <= len(order):
            k = int(n)
        else:
            todo = [i for i, c in enumerate(order, 1) if c not in mine]
            if not todo:
                return self._send(200, _page("Done", f"""<h1>All {len(order)} cases rated. Thank you.</h1>
<p>You may revise any rating: <a href=/case?n=1>first case</a>. <a href=/logout>Switch reader</a></p>"""))
            k = todo[0]
        case = self.cases[order[k - 1]]
        scale, prior = self.study["scales"][case["kind"]], mine.get(case["case_id"], {})
        radios = "".join(
            f"<label><input type=radio name=score value={v} id=score{v} required"
            f"{' checked' if prior.get('score') == v else ''}> {v}{f' ({html.escape(a)})' if a else ''}</label>"
            for v, a in ((int(v), a) for v, a in self.study["anchors"].items()))
        image = f"<img src=/image/{case['case_id']}.png alt='chest radiograph' id=image>"
        text = f"<div class=text id=text>{html.escape(case['text'])}</div>"
        caption = "Report" if case["kind"] == "report" else "Reference report"
        shown = (f"{image}<div><h3>{caption}</h3>{text}</div>" if case["kind"] == "report"
                 else f"<div><h3>{caption}</h3>{text}</div>{image}")
        prev_link = f"<a href=/case?n={k - 1}>Previous</a>" if k > 1 else ""
        next_link = f"<a href=/case?n={k + 1}>Skip</a>" if k < len(order) else ""
        body = f"""<nav>{prev_link}{next_link}<a href=/stop id=stop>Stop and continue later</a></nav>
<p id=progress>{html.escape(reader['name'])}: case {k} of {len(order)}; {len(mine)} rated.</p>
<h2>{html.escape(scale['name'])}</h2><p>{html.escape(scale['question'])}</p>
<div class=case>{shown}</div>
<form method=post action=/rate id=rating><input type=hidden name=case_id value={case['case_id']}>
<p class=scale>{radios}</p>
<p><label>Comment (optional)<br><textarea name=comment id=comment rows=3 maxlength=2000>
{html.escape(prior.get('comment', ''))}</textarea></label></p>
<p><button type=submit id=save>Save and next</button></p></form>"""
        self._send(200, _page(f"Case {k}", body))


def make_server(study_dir: str | pathlib.Path, host: str = "127.0.0.1", port: int = 8000) -> http.server.ThreadingHTTPServer:
    """The server of a study (not yet serving; ``server_address`` has the bound port)."""
    study_dir = pathlib.Path(study_dir)
    study = study_lib.load_cases(study_dir)
    cases = {c["case_id"]: c for c in study["cases"]}
    handler = type("StudyHandler", (Handler,), {
        "study": study, "cases": cases, "images": study_dir / "images",
        "store": store_lib.Store(study_dir, list(cases), seed=int(study.get("seed", 0)))})
    server = http.server.ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server
