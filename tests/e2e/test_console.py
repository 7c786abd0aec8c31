"""The operator console and the Grafana dashboard against a real `tessera dev`
cluster.

- Every metric name any panel of deploy/grafana/tessera.json queries exists
  in the /metrics output of the running cluster (so the dashboard cannot rot).
- The console on the gateway's admin port, loaded in headless Chromium
  (`chromium --headless --dump-dom`), shows the storage nodes by zone and
  the meta group, a bucket with its object count, and, after one storage
  node is killed, that node as down. A screenshot is saved to
  $TESSERA_ARTIFACTS/console.png (default tests/e2e/artifacts/) and its path
  printed.

Tests run in file order against one cluster (module fixture); the node kill
comes last."""

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from html.parser import HTMLParser

import pytest

from conftest import ROOT, DevCluster, free_port_base, s3_client

DASHBOARD = os.path.join(ROOT, "deploy", "grafana", "tessera.json")
ARTIFACTS = os.environ.get("TESSERA_ARTIFACTS") or os.path.join(ROOT, "tests", "e2e", "artifacts")
BUCKET = "console-photos"
# Small ones kept inline in the manifest, larger ones erasure-coded into
# stripes (so the page has shards and, after the kill, degraded stripes).
OBJECTS = {f"cats/{i:02d}.jpg": 1000 * (i + 1) for i in range(3)}
OBJECTS.update({f"videos/{i:02d}.mp4": (1 << 20) * (i + 1) + 12345 for i in range(4)})
# Short failure detection so the killed node turns down within seconds.
SUSPECT_AFTER_MS = 2000
DOWN_AFTER_MS = 6000


def chromium_bin():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("chromium is not installed (Debian package `chromium`; scripts/test.sh installs it)")


@pytest.fixture(scope="module")
def cluster():
    data_dir = tempfile.mkdtemp(prefix="tessera-console-")
    c = DevCluster(
        data_dir,
        free_port_base(),
        ["--suspect-after-ms", str(SUSPECT_AFTER_MS), "--down-after-ms", str(DOWN_AFTER_MS)],
    )
    try:
        c.start()
        yield c
    finally:
        c.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def console_url(cluster):
    gw = cluster.nodes("gateway")[0]
    return f"http://{gw['admin_addr']}/console/"


def get(url, timeout=10):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.headers, r.read()


class Browser:
    """Headless Chromium runs, each with a fresh profile directory."""

    def __init__(self):
        self.bin = chromium_bin()
        self.profile = tempfile.mkdtemp(prefix="tessera-chromium-")

    def run(self, *args, timeout=90):
        cmd = [
            self.bin,
            "--headless",
            "--no-sandbox",  # CI runs as root
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--hide-scrollbars",
            f"--user-data-dir={self.profile}",
            *args,
        ]
        # Its own process group: a timeout kills the renderer and GPU
        # helpers too.
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.communicate()
            pytest.fail(f"chromium did not finish within {timeout}s: {' '.join(args)}")
        if p.returncode != 0:
            pytest.fail(f"chromium exited {p.returncode}: {err.decode(errors='replace')[-2000:]}")
        return out.decode(errors="replace")

    def dump_dom(self, url):
        # Virtual time lets the page's fetch and rendering run before the
        # DOM is printed.
        return self.run("--virtual-time-budget=5000", "--dump-dom", url)

    def screenshot(self, url, path):
        self.run("--virtual-time-budget=5000", "--window-size=1400,1250", f"--screenshot={path}", url)

    def close(self):
        shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture(scope="module")
def browser():
    b = Browser()
    yield b
    b.close()


class Page(HTMLParser):
    """The rendered console: storage node cards, meta rows and bucket rows,
    by their data- attributes."""

    def __init__(self, html):
        super().__init__()
        self.nodes = {}  # addr -> attributes
        self.meta = {}
        self.buckets = {}
        self.objects = {}  # bucket -> rendered object count
        self._bucket = None
        self.health = None
        self.generated = None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "body":
            self.generated = a.get("data-generated")
        if "data-addr" in a and "data-state" in a:
            self.nodes[a["data-addr"]] = a
        if "data-meta" in a:
            self.meta[a["data-meta"]] = a
        if "data-bucket" in a:
            self._bucket = a["data-bucket"]
            self.buckets[self._bucket] = a
        if "data-objects" in a and self._bucket:
            self.objects[self._bucket] = int(a["data-objects"])
        if a.get("id") == "health":
            self.health = a.get("data-health")


def metric_names(text):
    """Every metric name the exposition declares (histograms with their
    _bucket, _sum and _count series)."""
    names = set()
    for line in text.splitlines():
        m = re.match(r"# TYPE (\S+) (\S+)", line)
        if m:
            names.add(m.group(1))
            if m.group(2) == "histogram":
                names.update(m.group(1) + s for s in ("_bucket", "_sum", "_count"))
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def panel_exprs(dashboard):
    def walk(panels):
        for p in panels:
            yield p
            yield from walk(p.get("panels", []))

    for p in walk(dashboard["panels"]):
        for t in p.get("targets", []):
            if t.get("expr"):
                yield p["title"], t["expr"]


def test_grafana_dashboard_queries_only_metrics_the_cluster_serves(cluster):
    served = set()
    for node in cluster.info["nodes"]:
        status, _, body = get(f"http://{node['admin_addr']}/metrics")
        assert status == 200, node
        served |= metric_names(body.decode())
    assert "tessera_gateway_s3_requests_total" in served
    with open(DASHBOARD) as f:
        dashboard = json.load(f)
    exprs = list(panel_exprs(dashboard))
    assert len(exprs) >= 30, "the dashboard lost its panels"
    used = set()
    missing = []
    for title, expr in exprs:
        names = set(re.findall(r"\btessera_[a-z0-9_]+", expr))
        assert names, f"panel {title!r} queries no tessera metric: {expr}"
        used |= names
        missing += [(title, n) for n in sorted(names - served)]
    assert not missing, f"panels query metrics no node serves: {missing}"
    # Every panel has a unique id and a data source variable.
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    print(f"\n[console] dashboard: {len(exprs)} queries over {len(used)} metrics, all served")


def test_console_api_and_page_are_read_only_and_served_by_the_admin_port(cluster, console_url):
    status, headers, body = get(console_url)
    assert status == 200
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert b"console.js" in body
    status, headers, body = get(console_url + "api/status")
    assert headers["Content-Type"] == "application/json"
    s = json.loads(body)
    assert s["meta"]["leader"] in (1, 2, 3), s["meta"]
    assert len(s["storage"]["nodes"]) == len(cluster.nodes("storage"))
    # Nothing but GET and HEAD.
    req = urllib.request.Request(console_url + "api/status", method="POST", data=b"{}")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 405


def wait_for_page(browser, url, what, pred, timeout=90):
    t0 = time.time()
    page = None
    while time.time() - t0 < timeout:
        page = Page(browser.dump_dom(url))
        if pred(page):
            return page, time.time() - t0
        time.sleep(1)
    detail = {a: n.get("data-state") for a, n in (page.nodes if page else {}).items()}
    pytest.fail(f"the console did not show {what} within {timeout}s; nodes: {detail}")


def test_console_shows_nodes_buckets_and_a_killed_node_as_down(cluster, console_url, browser):
    s3 = s3_client(cluster.info)
    s3.create_bucket(Bucket=BUCKET)
    for key, size in OBJECTS.items():
        s3.put_object(Bucket=BUCKET, Key=key, Body=os.urandom(size))
    storage = cluster.nodes("storage")
    addrs = {n["addr"] for n in storage}

    # Bucket statistics are cached by the console for up to 10 s.
    page, _ = wait_for_page(
        browser,
        console_url,
        "every node up and the bucket with its objects",
        lambda p: set(p.nodes) == addrs
        and all(n["data-state"] == "up" for n in p.nodes.values())
        and p.objects.get(BUCKET) == len(OBJECTS),
    )
    assert page.generated, "the page never rendered a status"
    assert len(page.meta) == 3, page.meta
    assert sum(1 for m in page.meta.values() if m.get("data-role") == "leader") == 1, page.meta
    assert page.health == "healthy", page.health

    victim = storage[0]
    os.kill(victim["pid"], signal.SIGKILL)
    print(f"\n[console] killed storage node {victim['addr']} (pid {victim['pid']})")
    page, waited = wait_for_page(
        browser,
        console_url,
        f"{victim['addr']} as down",
        lambda p: p.nodes.get(victim["addr"], {}).get("data-state") == "down",
    )
    others = {a: n["data-state"] for a, n in page.nodes.items() if a != victim["addr"]}
    assert all(st == "up" for st in others.values()), others
    assert page.health in ("degraded", "critical"), page.health
    print(f"[console] the page showed it down {waited:.1f}s after the first poll "
          f"(down-after {DOWN_AFTER_MS} ms)")

    os.makedirs(ARTIFACTS, exist_ok=True)
    shot = os.path.join(ARTIFACTS, "console.png")
    if os.path.exists(shot):
        os.remove(shot)
    browser.screenshot(console_url, shot)
    with open(shot, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert os.path.getsize(shot) > 20_000, "suspiciously small screenshot"
    print(f"[console] screenshot: {os.path.abspath(shot)}")
