#!/usr/bin/env python3
"""Drives the hub's web view in a real browser, for tests/system/web.rs.

Headless Chromium is started by the Rust test (so it is killed with the
test); this script finds its page over the DevTools protocol (HTTP on
127.0.0.1, then a WebSocket, with the pinned `websocket-client`), loads the
page and checks what an operator would look at:

- the page loads under the hub's Content-Security-Policy (which forbids
  framing it), with X-Frame-Options and Referrer-Policy, no console error,
  no uncaught exception and no CSP violation;
- with --token, the page asks for the token, and once given sends it only
  in a header: no address the page asks for holds it, and its live streams
  open with tickets;
- the agent is listed and up, and counters (samples accepted, metric bus
  messages) move, with the bus rate worked out in the browser;
- with --alarm, that channel's hi alarm shows in the agent's row, marked
  unacknowledged;
- a typed topic of a channel that has no samples says so;
- a channel picked from the picker starts empty (the hub only starts
  following it now), says so, then draws the points as they arrive.

With --outage it then prints `checked`, waits for the page to say
"disconnected" (the test kills the hub), prints `disconnected`, and waits
for the page to come back by itself (the test restarts the hub) and draw new
points: `reconnected`.

Each step prints one JSON line on stdout; a failure prints why on stderr
and exits 1. Every wait has a deadline; nothing sleeps to synchronise.
"""

import argparse
import json
import sys
import time
import urllib.request

import websocket  # websocket-client

POLL = 0.1


class Failed(Exception):
    pass


class Page:
    """One page target over the DevTools protocol, with what it logged."""

    def __init__(self, ws_url, timeout):
        self.ws = websocket.create_connection(ws_url, timeout=timeout, suppress_origin=True)
        self.next_id = 0
        self.errors = []  # console errors, exceptions, error log entries
        self.documents = []  # (url, headers) of documents loaded
        self.requested = []  # (url, type) of every request the page made
        self.allow_network_errors = False

    def close(self):
        try:
            self.ws.close()
        except Exception:
            pass

    def _event(self, message):
        method = message.get("method")
        params = message.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            args = [a.get("value", a.get("description", "")) for a in params.get("args", [])]
            self.errors.append({"kind": "console." + params["type"], "text": " ".join(map(str, args))})
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            text = details.get("exception", {}).get("description") or details.get("text", "")
            self.errors.append({"kind": "exception", "text": text})
        elif method == "Log.entryAdded":
            entry = params.get("entry", {})
            if entry.get("level") == "error":
                network = entry.get("source") == "network"
                if not (network and self.allow_network_errors):
                    self.errors.append(
                        {"kind": "log." + entry.get("source", "?"), "text": entry.get("text", ""), "url": entry.get("url", "")}
                    )
        elif method == "Network.requestWillBeSent":
            self.requested.append((params.get("request", {}).get("url", ""), params.get("type", "")))
        elif method == "Network.responseReceived" and params.get("type") == "Document":
            response = params.get("response", {})
            headers = {k.lower(): v for k, v in response.get("headers", {}).items()}
            self.documents.append((response.get("url"), response.get("status"), headers))

    def send(self, method, params=None, timeout=10.0):
        self.next_id += 1
        mine = self.next_id
        self.ws.send(json.dumps({"id": mine, "method": method, "params": params or {}}))
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Failed(f"no answer to {method} within {timeout}s")
            self.ws.settimeout(left)
            message = json.loads(self.ws.recv())
            if message.get("id") == mine:
                if "error" in message:
                    raise Failed(f"{method}: {message['error']}")
                return message.get("result", {})
            self._event(message)

    def pump(self):
        """Takes in the events that have arrived, without waiting."""
        self.ws.settimeout(0.01)
        try:
            while True:
                self._event(json.loads(self.ws.recv()))
        except websocket.WebSocketTimeoutException:
            pass

    def evaluate(self, expression):
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in result:
            raise Failed(f"evaluating {expression!r}: {result['exceptionDetails'].get('text')}")
        return result.get("result", {}).get("value")

    def wait(self, what, expression, timeout):
        """Polls `expression` until it is truthy; its value. Fails after `timeout` with the last value."""
        deadline = time.monotonic() + timeout
        last = None
        while True:
            last = self.evaluate(expression)
            if last:
                return last
            self.pump()
            if time.monotonic() >= deadline:
                raise Failed(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
            time.sleep(POLL)

    def no_errors(self, when):
        self.pump()
        csp = self.evaluate("JSON.stringify(window.__csp || [])")
        violations = json.loads(csp)
        if self.errors or violations:
            raise Failed(f"{when}: console errors {self.errors}, CSP violations {violations}")


def page_target(devtools, timeout):
    """The WebSocket URL of the browser's page (Chromium starts with one)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://{devtools}/json/list", timeout=5) as r:
                targets = json.load(r)
            pages = [t for t in targets if t.get("type") == "page" and t.get("webSocketDebuggerUrl")]
            if pages:
                return pages[0]["webSocketDebuggerUrl"]
            last = targets
        except OSError as e:
            last = e
        time.sleep(POLL)
    raise Failed(f"no page target on DevTools {devtools} within {timeout}s (last: {last!r})")


def step(name, **facts):
    print(json.dumps({"step": name, **facts}), flush=True)


def q(text):
    """A JS string literal."""
    return json.dumps(text)


# Recorded from the first script of every document: CSP violations, and each
# state the chart's status goes through (a state shown for 250 ms is easy to
# miss by polling).
PRELUDE = """
window.__csp = [];
document.addEventListener('securitypolicyviolation', (e) => {
  window.__csp.push(e.violatedDirective + ' ' + e.blockedURI + ' ' + e.sourceFile + ':' + e.lineNumber);
});
window.__chartStates = [];
document.addEventListener('DOMContentLoaded', () => {
  const status = document.getElementById('chart-status');
  if (!status) return;
  new MutationObserver(() => {
    const states = window.__chartStates;
    const entry = status.dataset.state + '|' + (document.getElementById('chart').dataset.topic || '');
    if (states[states.length - 1] !== entry) states.push(entry);
  }).observe(status, { attributes: true, childList: true, characterData: true, subtree: true });
});
"""


def check(args):
    page = Page(page_target(args.devtools, 20), timeout=20)
    try:
        run(page, args)
    finally:
        if args.screenshot:
            try:
                shot = page.send("Page.captureScreenshot", {"format": "png"})
                import base64

                with open(args.screenshot, "wb") as f:
                    f.write(base64.b64decode(shot["data"]))
            except Exception as e:  # a screenshot is a debugging aid only
                print(f"screenshot failed: {e}", file=sys.stderr)
        page.close()


def run(page, args):
    agent, topic = args.agent, f"org.plantd.Metric.{args.agent}.{args.channel}"
    for domain in ("Runtime", "Log", "Network", "Page"):
        page.send(f"{domain}.enable")
    page.send("Emulation.setDeviceMetricsOverride", {"width": 1400, "height": 1400, "deviceScaleFactor": 1, "mobile": False})
    page.send("Page.addScriptToEvaluateOnNewDocument", {"source": PRELUDE})
    # Asking for a ticket without the token is refused (401): the browser logs that.
    page.allow_network_errors = bool(args.token)
    page.send("Page.navigate", {"url": args.url})

    page.wait("the page to load", "document.readyState === 'complete' && !!document.getElementById('conn')", 20)
    docs = [d for d in page.documents if d[0].startswith(args.url.rstrip("/"))]
    if not docs or docs[0][1] != 200:
        raise Failed(f"the page did not load: {page.documents}")
    headers = docs[0][2]
    expected = {
        "content-security-policy": "default-src 'self'; frame-ancestors 'none'",
        "x-frame-options": "DENY",
        "referrer-policy": "no-referrer",
        "x-content-type-options": "nosniff",
    }
    for name, value in expected.items():
        if headers.get(name) != value:
            raise Failed(f"the page came without {name}: {value} (headers {headers})")
    if args.token:
        login = "document.getElementById('login')"
        page.wait("the page to ask for the token", f"!{login}.hidden && document.getElementById('conn').dataset.state !== 'live'", 15)
        page.evaluate(
            f"(() => {{ document.getElementById('token-input').value = {q(args.token)};"
            f" {login}.requestSubmit(); }})()"
        )
        page.wait("the overview stream to be live", f"{login}.hidden && document.getElementById('conn').dataset.state === 'live'", 15)
        page.pump()
        page.allow_network_errors = False
    page.wait("the overview stream to be live", "document.getElementById('conn').dataset.state === 'live'", 15)
    page.no_errors("after loading")

    row = f"document.querySelector('tr[data-agent=' + {q(json.dumps(agent))} + ']')"
    page.wait(f"agent {agent} listed as up", f"{row} && {row}.dataset.link === 'up'", 20)
    if args.alarm:
        # The agent's alarm in force, marked unacknowledged, in its row.
        cell = f"{row}.querySelector('td[data-field=\"alarms\"]')"
        shown = q(args.alarm + " hi!")
        page.wait(f"the alarm of {args.alarm} shown", f"{cell} !== null && {cell}.textContent.includes({shown})", 30)
    value = lambda selector: f"Number((document.querySelector({q(selector)}) || {{dataset: {{}}}}).dataset.value)"
    accepted = f"Number(document.getElementById('accepted-total').dataset.value)"
    metric_down = value('tr[data-bus="metric"] td[data-field="messages_down"]')
    updates = "Number(document.getElementById('updates').dataset.count)"
    start = page.evaluate(f"[{accepted}, {metric_down}, {updates}]")
    moved = page.wait(
        "the accepted-samples and metric-bus counters to move",
        f"(() => {{ const now = [{accepted}, {metric_down}, {updates}];"
        f" return now[0] > {start[0]} && now[1] > {start[1]} && now[2] >= {start[2]} + 2 ? now : null; }})()",
        20,
    )
    metric_rate = value('tr[data-bus="metric"] td[data-field="rate_down"]')
    rate = page.wait(
        "a metric bus rate worked out in the browser",
        f"(() => {{ const r = {metric_rate}; return r > 0 ? r : null; }})()",
        15,
    )
    step("counters", accepted=[start[0], moved[0]], metric_messages_down=[start[1], moved[1]], metric_rate=rate)

    # A typed topic with nothing on it says so.
    nothing = f"org.plantd.Metric.{agent}.no_such_channel"
    page.evaluate(
        "(() => { const input = document.getElementById('topic-input');"
        f" input.value = {q(agent + '.no_such_channel')};"
        " document.getElementById('chart-form').requestSubmit(); })()"
    )
    page.wait(
        "a typed topic without samples to say it has no points yet",
        "(() => { const s = document.getElementById('chart-status');"
        f" return document.getElementById('chart').dataset.topic === {q(nothing)}"
        " && s.dataset.state === 'empty' && s.textContent.includes('No points yet'); })()",
        15,
    )

    # The picker lists the agent's channels; picking one charts it.
    page.wait(
        f"{topic} in the channel picker",
        f"[...document.getElementById('channel-picker').options].some((o) => o.value === {q(topic)})",
        15,
    )
    page.evaluate(
        "(() => { const picker = document.getElementById('channel-picker');"
        f" picker.value = {q(topic)}; picker.dispatchEvent(new Event('change', {{ bubbles: true }})); }})()"
    )
    chart = "document.getElementById('chart')"
    drawn = page.wait(
        f"the chart of {topic} to draw points",
        f"(() => {{ const c = {chart}; const line = document.getElementById('chart-line');"
        f" if (c.dataset.topic !== {q(topic)} || !line) return null;"
        " const n = (line.getAttribute('d').match(/[ML]/g) || []).length;"
        f" return Number(c.dataset.drawn) >= {args.points} && n >= {args.points}"
        " ? {drawn: Number(c.dataset.drawn), points: Number(c.dataset.points), segments: n} : null; })()",
        20,
    )
    states = page.evaluate("window.__chartStates")
    picked = [s.split("|")[0] for s in states if s.endswith("|" + topic)]
    if "empty" not in picked or ("live" in picked and picked.index("empty") > picked.index("live")):
        raise Failed(f"a freshly picked channel should first say it has no points yet: states {states}")
    grown = page.wait(
        "the chart to keep growing",
        f"Number({chart}.dataset.received) > {drawn['points']} ? Number({chart}.dataset.received) : null",
        10,
    )
    page.no_errors("after charting")
    tickets = check_requests(page, args)
    step("checked", chart=drawn, received=grown, chart_states=picked, stream_tickets=tickets)

    if not args.outage:
        return

    # The test kills the hub now: the page must say so, and keep what it had.
    page.allow_network_errors = True  # reconnection attempts fail while the hub is down
    page.wait(
        "the page to say disconnected",
        "document.getElementById('conn').dataset.state === 'disconnected'"
        " && document.getElementById('conn').textContent.includes('disconnected')"
        " && document.getElementById('main').classList.contains('stale')",
        20,
    )
    received = page.evaluate(f"Number({chart}.dataset.received)")
    step("disconnected", chart_state=page.evaluate("document.getElementById('chart-status').dataset.state"))

    # The test restarts the hub: the page comes back by itself.
    page.wait("the overview stream to be live again", "document.getElementById('conn').dataset.state === 'live'", 40)
    page.wait(f"agent {agent} up again", f"{row} && {row}.dataset.link === 'up'", 30)
    after = page.wait(
        "new points on the chart after the reconnect",
        f"Number({chart}.dataset.received) > {received} && document.getElementById('chart-status').dataset.state === 'live'"
        f" ? Number({chart}.dataset.received) : null",
        30,
    )
    page.allow_network_errors = False
    page.no_errors("after reconnecting")
    if args.token and not page.evaluate("document.getElementById('login').hidden"):
        raise Failed("the page asked for the token again after the hub came back")
    tickets = check_requests(page, args)
    step("reconnected", received=[received, after], stream_tickets=tickets)


def check_requests(page, args):
    """No address the page asked for holds the token; with one, its streams
    opened with tickets. How many stream addresses had one."""
    page.pump()
    if args.token:
        leaked = [u for u, _ in page.requested if args.token in u]
        if leaked:
            raise Failed(f"the token is in addresses the page asked for: {leaked}")
    streams = [u for u, kind in page.requested if kind == "EventSource"]
    with_ticket = [u for u in streams if "ticket=" in u]
    if args.token and (len(with_ticket) != len(streams) or not any("/api/samples" in u for u in with_ticket)):
        raise Failed(f"live streams without a ticket: {streams}")
    return len(with_ticket)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devtools", required=True, help="Chromium's DevTools address, 127.0.0.1:PORT")
    parser.add_argument("--url", required=True, help="the hub's web view, http://127.0.0.1:PORT/")
    parser.add_argument("--agent", required=True)
    parser.add_argument("--channel", required=True, help="a durable channel of the agent, to chart")
    parser.add_argument("--points", type=int, default=5, help="points the chart must draw")
    parser.add_argument("--outage", action="store_true", help="also follow the page through a hub restart")
    parser.add_argument("--alarm", help="a channel of the agent whose hi alarm is in force, to find in its row")
    parser.add_argument("--token", help="the hub's HTTP token, to give the page when it asks")
    parser.add_argument("--screenshot", help="write a PNG of the page here at the end")
    args = parser.parse_args()
    try:
        check(args)
    except Failed as e:
        print(f"web check failed: {e}", file=sys.stderr, flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
