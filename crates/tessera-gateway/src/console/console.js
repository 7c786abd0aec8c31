// Tessera console: polls /console/api/status every 2 s and redraws.
// Every value from the cluster (bucket names, addresses) goes into the page
// as text (textContent), never as HTML.
"use strict";

const POLL_MS = 2000;
const STATES = ["up", "suspect", "draining", "down"];

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null) continue;
    if (k === "class") e.className = v;
    else if (k === "style") e.style.cssText = v;
    else e.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null) continue;
    e.appendChild(typeof c === "object" ? c : document.createTextNode(String(c)));
  }
  return e;
}

function bytes(n) {
  if (n === null || n === undefined) return "?";
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return (i === 0 ? v.toFixed(0) : v.toFixed(v < 10 ? 2 : 1)) + " " + units[i];
}

function count(n) {
  return n === null || n === undefined ? "?" : Number(n).toLocaleString("en-US");
}

function duration(s) {
  if (s === null || s === undefined) return "unknown";
  s = Math.round(s);
  if (s >= 3600) return Math.floor(s / 3600) + "h" + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + "m";
  if (s >= 60) return Math.floor(s / 60) + "m" + String(s % 60).padStart(2, "0") + "s";
  return s + "s";
}

function pct(used, total) {
  return total > 0 ? Math.min(100, (100 * used) / total) : 0;
}

function replace(id, ...children) {
  const node = document.getElementById(id);
  node.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined));
  return node;
}

function bar(used, total, cls) {
  const p = pct(used, total);
  const level = p >= 90 ? "crit" : p >= 75 ? "warn" : "ok";
  return el("div", { class: "bar " + (cls || "") },
    el("div", { class: "fill " + level, style: "width:" + p.toFixed(1) + "%" }));
}

function card(title, value, detail, state) {
  return el("div", { class: "card", "data-state": state || "ok" },
    el("div", { class: "card-title" }, title),
    el("div", { class: "card-value" }, value),
    el("div", { class: "card-detail muted" }, detail || ""));
}

function health(s) {
  const nodes = s.storage.nodes;
  const down = nodes.filter((n) => n.state === "down").length;
  const suspect = nodes.filter((n) => n.state === "suspect").length;
  const d = s.durability;
  if (s.meta.leader === null || s.storage.error) return ["critical", "no meta leader"];
  if (d && d.at_risk_unreadable > 0) return ["critical", d.at_risk_unreadable + " stripes unreadable"];
  if (down > 0 || (d && d.queued > 0)) return ["degraded", "degraded"];
  if (suspect > 0) return ["warning", suspect + " suspect"];
  return ["healthy", "healthy"];
}

function renderSummary(s) {
  const nodes = s.storage.nodes;
  const up = nodes.filter((n) => n.state === "up").length;
  const cap = nodes.reduce((a, n) => a + n.capacity_bytes, 0);
  const used = nodes.reduce((a, n) => a + n.used_bytes, 0);
  const d = s.durability;
  const objects = s.buckets.items.reduce((a, b) => a + (b.objects || 0), 0);
  const stored = s.buckets.items.reduce((a, b) => a + (b.bytes || 0), 0);
  replace("summary",
    card("Storage nodes", up + " / " + nodes.length + " up",
      STATES.filter((st) => st !== "up")
        .map((st) => nodes.filter((n) => n.state === st).length + " " + st).join(", "),
      up === nodes.length ? "ok" : "bad"),
    card("Capacity", bytes(used) + " / " + bytes(cap), pct(used, cap).toFixed(1) + "% used"),
    card("Objects", count(objects), bytes(stored) + " in " + s.buckets.items.length + " buckets"),
    d ? card("Stripes", count(d.whole) + " / " + count(d.stripes) + " whole",
      d.queued > 0 ? count(d.queued) + " queued for repair" : "full redundancy",
      d.queued > 0 ? "bad" : "ok")
      : card("Stripes", "?", s.durability_error, "bad"),
    card("Meta leader", s.meta.leader === null ? "none" : "meta " + s.meta.leader,
      s.meta.members.filter((m) => m.reachable).length + " / " + s.meta.members.length + " reachable",
      s.meta.leader === null ? "bad" : "ok"));
}

function renderZones(s) {
  document.getElementById("epoch").textContent =
    s.storage.epoch === null ? "" : "epoch " + s.storage.epoch;
  if (s.storage.error) {
    replace("zones", el("div", { class: "error" }, "cluster map unavailable: " + s.storage.error));
    return;
  }
  const zones = new Map();
  for (const n of s.storage.nodes) {
    if (!zones.has(n.zone)) zones.set(n.zone, []);
    zones.get(n.zone).push(n);
  }
  const cols = [];
  for (const [zone, nodes] of zones) {
    const cap = nodes.reduce((a, n) => a + n.capacity_bytes, 0);
    const used = nodes.reduce((a, n) => a + n.used_bytes, 0);
    cols.push(el("div", { class: "zone", "data-zone": zone },
      el("h3", {}, "zone " + zone, el("span", { class: "muted" }, " " + bytes(used) + " / " + bytes(cap))),
      nodes.map((n) => el("div", { class: "node", "data-addr": n.addr, "data-id": n.id, "data-state": n.state },
        el("div", { class: "node-head" },
          el("span", { class: "addr" }, n.addr),
          el("span", { class: "state state-" + n.state }, n.state)),
        el("div", { class: "muted small", title: n.id }, "id " + n.id),
        bar(n.used_bytes, n.capacity_bytes),
        el("div", { class: "small" },
          bytes(n.used_bytes) + " / " + bytes(n.capacity_bytes) +
          " (" + pct(n.used_bytes, n.capacity_bytes).toFixed(1) + "%)"),
        el("div", { class: "small muted" },
          count(n.shard_count) + " shard files" +
          (n.placed_shards === null ? "" : ", " + count(n.placed_shards) + " placed by meta"))))));
  }
  replace("zones", cols.length ? cols : el("div", { class: "muted" }, "no storage nodes registered"));
}

function renderMeta(s) {
  const rows = s.meta.members.map((m) => {
    const leader = m.id !== null && m.id === s.meta.leader;
    return el("tr", { class: leader ? "leader" : "", "data-meta": m.addr,
      "data-role": m.reachable ? (m.state || "").toLowerCase() : "unreachable" },
      el("td", {}, m.id === null ? "?" : m.id),
      el("td", {}, m.addr),
      el("td", {}, m.reachable ? el("span", { class: "state state-" + (leader ? "leader" : "up") }, m.state || "?")
        : el("span", { class: "state state-down", title: m.error || "" }, "unreachable")),
      el("td", { class: "num" }, m.term ?? ""),
      el("td", { class: "num" }, m.last_log_index ?? ""),
      el("td", { class: "num" }, m.last_applied ?? ""));
  });
  replace("meta", el("thead", {}, el("tr", {},
    ["ID", "Address", "Role", "Term", "Last log", "Applied"].map((h) => el("th", {}, h)))),
  el("tbody", {}, rows));
}

function renderBuckets(s) {
  const b = s.buckets;
  document.getElementById("buckets-asof").textContent =
    "as of " + new Date(b.as_of_unix_ms).toLocaleTimeString("en-GB") + (b.truncated ? " (first 100)" : "");
  const body = b.error ? [el("tr", {}, el("td", { colspan: 4, class: "error" }, b.error))]
    : b.items.length === 0 ? [el("tr", {}, el("td", { colspan: 4, class: "muted" }, "no buckets yet"))]
    : b.items.map((x) => el("tr", { "data-bucket": x.name },
      el("td", {}, x.name),
      el("td", { class: "num", "data-objects": x.objects }, count(x.objects)),
      el("td", { class: "num" }, bytes(x.bytes)),
      el("td", {}, new Date(x.created_unix_ms).toISOString().replace("T", " ").slice(0, 19))));
  document.querySelector("#buckets tbody").replaceChildren(...body);
}

function renderDurability(s) {
  const d = s.durability;
  if (!d) {
    replace("durability", el("div", { class: "error" }, "durability figures unavailable: " + s.durability_error));
    return;
  }
  const full = s.gateway.k + s.gateway.m;
  const rows = [{ label: full + " of " + full + " (whole)", n: d.whole, cls: "ok" }];
  for (const [surviving, n] of d.queued_by_surviving.slice().sort((a, b) => b[0] - a[0])) {
    rows.push({ label: surviving + " of " + full, n, cls: surviving < s.gateway.k ? "crit" : "warn" });
  }
  const max = Math.max(1, ...rows.map((r) => r.n));
  const rate = d.repair_rate_bytes_per_sec;
  const cfg = d.config;
  replace("durability",
    el("div", { class: "small muted" }, "Stripes by surviving shards"),
    el("table", { class: "hist" }, el("tbody", {}, rows.map((r) =>
      el("tr", { "data-surviving": r.label },
        el("td", {}, r.label),
        el("td", { class: "histbar" }, el("div", { class: "bar" },
          el("div", { class: "fill " + r.cls, style: "width:" + ((100 * r.n) / max).toFixed(1) + "%" }))),
        el("td", { class: "num" }, count(r.n)))))),
    d.at_risk_unreadable > 0
      ? el("div", { class: "error" }, count(d.at_risk_unreadable) + " stripes have fewer than k shards: unreadable until nodes return")
      : null,
    el("dl", { class: "facts", id: "repair" },
      el("dt", {}, "Repair queue"), el("dd", { "data-queued": d.queued }, count(d.queued) + " stripes, " + count(d.leased) + " leased"),
      el("dt", {}, "Repaired"), el("dd", {}, count(d.repaired_stripes) + " stripes, " + bytes(d.repaired_bytes) + " since creation"),
      el("dt", {}, "Rate"), el("dd", {}, rate === null ? "measuring" : bytes(rate) + "/s"),
      el("dt", {}, "ETA"), el("dd", {}, d.queued === 0 ? "full redundancy" : duration(d.repair_eta_secs)),
      el("dt", {}, "Limit"), el("dd", {}, (cfg.rate_bytes_per_sec === 0 ? "unlimited" : bytes(cfg.rate_bytes_per_sec) + "/s") +
        " x" + cfg.concurrency + " per gateway" + (cfg.paused ? " (PAUSED)" : "")),
      el("dt", {}, "GC backlog"), el("dd", {}, count(d.gc_items) + " items, " + count(d.gc_stripes) + " stripes")));
}

function render(s) {
  const [h, text] = health(s);
  const badge = document.getElementById("health");
  badge.dataset.health = h;
  badge.textContent = text;
  document.getElementById("updated").textContent =
    "updated " + new Date(s.generated_unix_ms).toLocaleTimeString("en-GB") +
    " from a gateway " + s.gateway.version + ", RS(" + s.gateway.k + "," + s.gateway.m + "), " + s.gateway.region;
  document.body.dataset.generated = s.generated_unix_ms;
  renderSummary(s);
  renderZones(s);
  renderMeta(s);
  renderBuckets(s);
  renderDurability(s);
}

async function poll() {
  const err = document.getElementById("error");
  try {
    const r = await fetch("/console/api/status", { cache: "no-store" });
    if (!r.ok) throw new Error("HTTP " + r.status);
    render(await r.json());
    err.hidden = true;
  } catch (e) {
    err.hidden = false;
    err.textContent = "cannot reach the gateway: " + e.message + " (retrying)";
    document.getElementById("health").dataset.health = "unknown";
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

document.addEventListener("DOMContentLoaded", poll);
