// OTA recall dashboard: the operators' pages (campaigns, one campaign live, customer care, login).
// No framework, no build: DOM built with textContent only (never innerHTML), charts as inline SVG.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
  if (text !== undefined) node.textContent = String(text);
  return node;
}

function $(id) {
  return document.getElementById(id);
}

function setText(id, value) {
  const node = $(id);
  if (node && node.textContent !== String(value)) node.textContent = String(value);
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

function pad(n) {
  return String(n).padStart(2, "0");
}

// Times are shown in UTC, as the server's plain-words next steps are.
function fmtTime(iso, seconds = true) {
  if (!iso) return "–";
  const d = new Date(iso);
  const base = `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())} ${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}`;
  return (seconds ? `${base}:${pad(d.getUTCSeconds())}` : base) + " UTC";
}

function pct(part, whole) {
  return whole ? `${Math.round((100 * part) / whole)}%` : "–";
}

function loginUrl() {
  return `/ui/login?next=${encodeURIComponent(location.pathname + location.search)}`;
}

// The API's refusal in words: a message, or a 422's list of field problems.
function problem(body, response) {
  const detail = body && body.detail;
  if (Array.isArray(detail)) return detail.map((d) => `${(d.loc || []).slice(1).join(".")}: ${d.msg}`).join("; ");
  return detail ? String(detail) : response.statusText;
}

async function answer(response) {
  if (response.status === 401) {
    location.assign(loginUrl());
    throw new Error("not signed in");
  }
  let body = null;
  try {
    body = await response.json();
  } catch (_) {
    body = null;
  }
  if (!response.ok) {
    const error = new Error(problem(body, response));
    error.status = response.status;
    throw error;
  }
  return body;
}

async function getJSON(url) {
  return answer(await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } }));
}

// The signed-in person (GET /ui/session): name, role, what they may do, and the CSRF token
// every write from these pages carries (the cookie alone never writes).
let SESSION = null;

// A write through the REST API with the login cookie and this session's CSRF token; returns the
// answer's body and the server's time of it (its Date header).
async function send(url, body) {
  const response = await fetch(url, {
    method: "POST",
    credentials: "same-origin",
    headers: { Accept: "application/json", "Content-Type": "application/json", "X-CSRF-Token": SESSION ? SESSION.csrf_token : "" },
    body: JSON.stringify(body || {}),
  });
  const data = await answer(response);
  const date = response.headers.get("date");
  return { data, at: (date ? new Date(date) : new Date()).toISOString() };
}

// State colours and groups, shared by every view.
const STATE_CLASS = {
  remedied: "c-ok", remedied_at_dealer: "c-ok", inspected_not_needed: "c-ok",
  failed: "c-bad", rolled_back: "c-bad", timed_out: "c-bad",
  deferred: "c-warn", declined: "c-other", unreachable: "c-other", withdrawn: "c-other",
  pending: "c-idle",
};
const STATE_LABEL = {
  pending: "Pending", notified: "Notified", deferred: "Deferred", consented: "Consented",
  downloading: "Downloading", verifying: "Verifying", installing: "Installing", rebooting: "Rebooting",
  remedied: "Remedied (OTA)", failed: "Failed", rolled_back: "Rolled back", timed_out: "Timed out",
  remedied_at_dealer: "Remedied at dealer", inspected_not_needed: "Inspected, not needed",
  unreachable: "Unreachable", declined: "Declined", withdrawn: "Withdrawn",
};

function stateClass(state) {
  return STATE_CLASS[state] || "c-busy";
}

function badge(text, kind) {
  return el("span", { class: `badge ${kind || ""}`, text });
}

function statusBadge(status) {
  return badge(status, status === "active" ? "busy" : status === "completed" ? "ok" : status === "paused" ? "warn" : status === "cancelled" ? "bad" : "");
}

function stateBadge(state) {
  const cls = stateClass(state);
  const kind = cls === "c-ok" ? "ok" : cls === "c-bad" ? "bad" : cls === "c-warn" ? "warn" : cls === "c-idle" ? "" : "busy";
  return badge(STATE_LABEL[state] || state, kind);
}

function progressBar(parts, total, label) {
  const bar = el("div", { class: "bar", role: "img", "aria-label": label });
  for (const [value, cls] of parts) {
    if (!value || !total) continue;
    const part = el("span", { class: cls });
    part.style.width = `${(100 * value) / total}%`; // CSSOM, allowed by the pages' CSP (a style attribute is not)
    bar.append(part);
  }
  return bar;
}

async function whoAmI() {
  try {
    SESSION = await getJSON("/ui/session");
    setText("who", `Signed in as ${SESSION.name} (${SESSION.role})`);
  } catch (_) {
    SESSION = null; /* the page's own request reports the problem */
  }
  return SESSION;
}

// Every action asks first: a <dialog> saying what will happen, with the reason (or evidence) field
// (``reason.optional``: it may stay empty). ``run(text)`` does it; a refusal is shown in the dialog, which stays open.
function confirmAction({ title, what, confirm, reason, outcome, run }) {
  const dialog = $("confirm");
  const box = $("reason");
  setText("confirm-title", title);
  setText("confirm-what", what);
  setText("confirm-ok", confirm);
  if ($("reason-field")) {
    $("reason-field").hidden = !reason;
    box.value = "";
    box.required = Boolean(reason && !reason.optional);
    if (reason) {
      setText("reason-label", reason.label);
      box.maxLength = reason.max;
    }
  }
  if ($("outcome-fields")) $("outcome-fields").hidden = !outcome;
  $("confirm-error").hidden = true;
  $("confirm-form").onsubmit = async (event) => {
    event.preventDefault();
    const text = reason ? box.value.trim() : "";
    if (reason && !reason.optional && !text) {
      setText("confirm-error", `${reason.label}: required.`);
      $("confirm-error").hidden = false;
      return;
    }
    $("confirm-ok").disabled = true;
    try {
      await run(text);
      dialog.close();
    } catch (error) {
      setText("confirm-error", error.message);
      $("confirm-error").hidden = false;
    } finally {
      $("confirm-ok").disabled = false;
    }
  };
  $("confirm-back").onclick = () => dialog.close();
  dialog.showModal();
  if (reason) box.focus();
}

function showOperatorColumns(visible) {
  for (const node of document.querySelectorAll(".op-only")) node.hidden = !visible;
}

function markNav(page) {
  const link = document.querySelector(`header.top a[data-nav="${page}"]`);
  if (link) link.setAttribute("aria-current", "page");
}

function setLive(state, text) {
  const live = $("live");
  if (!live) return;
  live.className = `live ${state}`;
  setText("live-text", text);
}

// ---------------------------------------------------------------- login

function loginPage() {
  const params = new URLSearchParams(location.search);
  const next = params.get("next");
  if (next && next.startsWith("/ui")) $("next").value = next;
  if (params.get("error")) $("error").hidden = false;
  $("token").focus();
}

// ---------------------------------------------------------------- campaigns list

async function refreshApprovals(refresh) {
  let page;
  try {
    page = await getJSON("/api/v1/recalls?status=awaiting_approval&limit=100");
  } catch (_) {
    return;
  }
  $("approvals").hidden = page.items.length === 0;
  const mayApprove = Boolean(SESSION && SESSION.may_approve);
  showOperatorColumns(mayApprove);
  fill(document.querySelector("#approval-table tbody"), page.items.map((r) => {
    const request = r.launch_request || {};
    const cell = el("td", { class: "op-only" });
    cell.hidden = !mayApprove;
    if (mayApprove) {
      const button = el("button", { type: "button", text: "Approve launch" });
      // A planned start still ahead: approving launches the campaign, which notifies no car before it.
      const start = r.rollout && r.rollout.start_at && Date.parse(r.rollout.start_at) > Date.now() ? r.rollout.start_at : null;
      const when = start
        ? `approving launches the campaign, which starts at ${fmtTime(start, false)} (no car is notified before) for ${r.affected_count} cars`
        : `approving launches the campaign at once to ${r.affected_count} cars`;
      button.addEventListener("click", () => confirmAction({
        title: `Approve the launch of ${r.campaign_number}?`,
        what: `${r.title}. Requested by ${request.requested_by || "?"}; ${when}, and the audit log names you as the second person.`,
        confirm: "Approve and launch",
        run: async () => {
          const { data, at } = await send(`/api/v1/recalls/${r.id}/approve`, {});
          $("approval-result").replaceChildren(
            `Approved by ${SESSION.name} at ${fmtTime(at)}: `,
            el("a", { href: `/ui/campaigns/${data.id}`, text: `campaign #${data.id}` }),
            data.scheduled ? ` launched; it starts at ${fmtTime(data.starts_at, false)}.` : " launched.");
          refresh();
        },
      }));
      cell.append(button);
    }
    return el("tr", { "data-recall": r.id },
      el("td", { class: "mono", text: r.campaign_number }),
      el("td", { text: r.title }),
      el("td", { class: "num", text: r.affected_count }),
      el("td", { text: `by ${request.requested_by || "?"} at ${fmtTime(request.requested_at)}` }),
      cell);
  }));
}

async function campaignsPage() {
  markNav("campaigns");
  await whoAmI();
  const tbody = document.querySelector("#campaigns tbody");
  async function refresh() {
    refreshApprovals(refresh);
    try {
      const rows = await getJSON("/api/v1/dashboard/campaigns");
      $("empty").hidden = rows.length > 0;
      fill(
        tbody,
        rows.map((c) => {
          const label = c.scheduled
            ? `scheduled: starts at ${fmtTime(c.starts_at, false)}; no car notified yet of ${c.population}`
            : `${c.remedied} remedied, ${c.errors} errors, ${c.in_progress} in progress, ${c.not_notified} not notified yet of ${c.population}`;
          return el(
            "tr",
            { "data-campaign": c.id },
            el("td", {}, el("a", { href: `/ui/campaigns/${c.id}`, text: `#${c.id}${c.kind === "rollback" ? " (rollback)" : ""}` })),
            el("td", { class: "mono", text: c.recall_number }),
            el("td", { text: c.title }),
            el("td", {}, c.scheduled ? badge(`starts at ${fmtTime(c.starts_at, false)}`, "warn") : statusBadge(c.status)),
            el("td", { class: "num", text: c.population }),
            el("td", { class: "num", text: `${c.remedied} (${pct(c.remedied, c.population)})` }),
            el("td", { class: "num", text: c.errors }),
            el("td", {}, progressBar([[c.remedied, "c-ok"], [c.errors, "c-bad"], [c.in_progress, "c-busy"], [c.other, "c-other"]], c.population, label)),
            el("td", { text: fmtTime(c.launched_at, false) }),
          );
        }),
      );
      setLive("on", `Updated ${fmtTime(new Date().toISOString())}`);
    } catch (error) {
      setLive("off", `Could not load campaigns: ${error.message}`);
    }
  }
  await refresh();
  setInterval(refresh, 5000);
}

// ---------------------------------------------------------------- one campaign, live

function funnelChart(stages) {
  const top = Math.max(1, stages[0] ? stages[0].cars : 1);
  const rowH = 34;
  const width = 600;
  const labelW = 170;
  const chart = svg("svg", {
    class: "chart", viewBox: `0 0 ${width} ${stages.length * rowH}`, role: "img",
    "aria-label": "Funnel: " + stages.map((s) => `${s.label} ${s.cars}`).join(", "),
  });
  stages.forEach((s, i) => {
    const y = i * rowH;
    const barW = ((width - labelW - 70) * s.cars) / top;
    chart.append(svg("text", { x: 0, y: y + 21 }, s.label));
    chart.append(svg("rect", { class: "track", x: labelW, y: y + 6, width: width - labelW - 70, height: 22, rx: 3 }));
    chart.append(svg("rect", { class: s.stage === "remedied" ? "c-ok" : "c-busy", x: labelW, y: y + 6, width: Math.max(0, barW), height: 22, rx: 3 }));
    chart.append(svg("text", { class: "value", x: labelW + (width - labelW - 70) + 8, y: y + 22, "data-stage": s.stage }, s.cars));
  });
  return chart;
}

function stepPath(points, x, y, endX) {
  if (!points.length) return "";
  let d = `M ${x(points[0].t)} ${y(0)} L ${x(points[0].t)} ${y(points[0].n)}`;
  for (let i = 1; i < points.length; i++) {
    d += ` L ${x(points[i].t)} ${y(points[i - 1].n)} L ${x(points[i].t)} ${y(points[i].n)}`;
  }
  return d + ` L ${endX} ${y(points[points.length - 1].n)}`;
}

function timeChart(data) {
  const width = 600, height = 240, left = 44, right = 16, topPad = 12, bottom = 34;
  const remedied = data.remedied_over_time.map((p) => ({ t: Date.parse(p.at), n: p.cars }));
  const failures = data.failures_over_time.map((p) => ({ t: Date.parse(p.at), n: p.cars }));
  const start = Date.parse(data.launched_at);
  const all = remedied.concat(failures).map((p) => p.t);
  const end = Math.max(start + 1000, Date.parse(data.generated_at), ...all);
  const maxY = Math.max(1, data.population);
  const x = (t) => left + ((width - left - right) * (t - start)) / (end - start);
  const y = (n) => topPad + (height - topPad - bottom) * (1 - n / maxY);
  const last = remedied.length ? remedied[remedied.length - 1].n : 0;
  const chart = svg("svg", {
    class: "chart", viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": `Cars remedied over time: ${last} of ${data.population} so far; ${data.failures_over_time.length ? failures[failures.length - 1].n : 0} failures reported`,
  });
  for (const n of [0, Math.round(maxY / 2), maxY]) {
    chart.append(svg("line", { class: "axis", x1: left, x2: width - right, y1: y(n), y2: y(n) }));
    chart.append(svg("text", { x: left - 6, y: y(n) + 4, "text-anchor": "end" }, n));
  }
  chart.append(svg("text", { x: left, y: height - 10 }, fmtTime(new Date(start).toISOString())));
  chart.append(svg("text", { x: width - right, y: height - 10, "text-anchor": "end" }, fmtTime(new Date(end).toISOString())));
  if (failures.length) chart.append(svg("path", { class: "line-bad", d: stepPath(failures, x, y, x(end)) }));
  if (remedied.length) chart.append(svg("path", { class: "line-ok", d: stepPath(remedied, x, y, x(end)) }));
  const box = el("div", {}, chart);
  box.append(el("div", { class: "legend" },
    el("span", {}, el("i", { class: "c-ok" }), `Remedied (${last})`),
    el("span", {}, el("i", { class: "c-bad" }), `Failure reports (${failures.length ? failures[failures.length - 1].n : 0})`)));
  return box;
}

function stateBar(counts, population, scheduled) {
  // A scheduled campaign's waiting cars are not progress: its bar stays empty until it starts.
  const parts = Object.entries(counts).filter(([s, n]) => n > 0 && !(scheduled && s === "pending"));
  const label = parts.map(([s, n]) => `${STATE_LABEL[s] || s} ${n}`).join(", ");
  const box = el("div", {}, progressBar(parts.map(([s, n]) => [n, stateClass(s)]), population, label || "no cars"));
  box.firstChild.style.height = "20px";
  box.append(el("div", { class: "legend" }, ...parts.map(([s, n]) => el("span", {}, el("i", { class: stateClass(s) }), `${STATE_LABEL[s] || s} ${n}`))));
  return box;
}

function shareList(title, shares) {
  const box = el("div", { class: "share-list" }, el("h3", { text: title }));
  if (!shares.length) box.append(el("p", { class: "muted", text: "–" }));
  for (const s of shares.slice(0, 6)) {
    box.append(el("div", { class: "share" },
      el("div", { class: "row" }, s.text ? el("span", {}, reasonWords(s.value, s.text)) : el("span", { class: "mono", text: s.value }),
        el("span", { text: `${s.failures} of ${s.cars} (${pct(s.failures, s.cars)})` })),
      progressBar([[s.failures, "c-bad"]], s.cars, `${s.value}: ${s.failures} of ${s.cars} failed`)));
  }
  return box;
}

function renderCampaign(d) {
  document.title = `${d.recall_number} · campaign ${d.campaign_id} · OTA recalls`;
  setText("crumb", `Campaign ${d.campaign_id}`);
  setText("title", `${d.recall_number}: ${d.title}`);
  const kind = d.kind === "rollback" ? `Rollback campaign of #${d.parent_campaign_id}` : (d.safety_recall ? "Safety recall" : "Recall");
  const sub = $("subtitle");
  sub.replaceChildren(
    `${kind} · campaign ${d.campaign_id} · ${d.hardware_id} → ${d.release_version} · launched ${fmtTime(d.launched_at, false)} · `,
    d.scheduled ? badge(`starts at ${fmtTime(d.starts_at, false)}`, "warn") : statusBadge(d.status),
    ...(d.scheduled && d.status !== "active" ? [" ", statusBadge(d.status)] : []),
    d.status_reason && !(d.done && d.status_reason === "every car is final") ? ` ${afterStatus(d.status, d.status_reason)}` : "",
    d.done ? " · every car settled" : "",
  );
  showActions(d.status);
  if (d.rollback_campaign_id) sub.append(" · ", el("a", { href: `/ui/campaigns/${d.rollback_campaign_id}`, text: `rollback campaign #${d.rollback_campaign_id}` }));
  setText("t-population", d.population);
  setText("t-remedied", d.remedied);
  setText("t-in-progress", d.in_progress);
  setText("t-not-notified", d.not_notified);
  setText("t-errors", d.errors);
  setText("t-notices", d.notices_published);
  $("funnel").replaceChildren(funnelChart(d.funnel));
  $("timechart").replaceChildren(timeChart(d));
  $("statebar").replaceChildren(stateBar(d.counts, d.population, d.scheduled));
  fill(document.querySelector("#states tbody"), Object.entries(d.counts).filter(([, n]) => n > 0).map(([s, n]) =>
    el("tr", { "data-state": s }, el("th", { scope: "row" }, stateBadge(s)), el("td", { class: "num", text: n }), el("td", { class: "num", text: pct(n, d.population) }))));
  const wave = d.waves[0];
  setText("waves-caption", wave
    ? `A wave opens the next once ${wave.success_threshold_percent}% of its cars are remedied; ` +
      (wave.error_threshold_count || wave.error_threshold_percent
        ? `errors pause the campaign at ${[wave.error_threshold_count ? `${wave.error_threshold_count} car${wave.error_threshold_count === 1 ? "" : "s"}` : "", wave.error_threshold_percent ? `${wave.error_threshold_percent}%` : ""].filter(Boolean).join(" or ")} per wave.`
        : "no error threshold.")
    : "");
  fill(document.querySelector("#waves tbody"), d.waves.map((w) => {
    const gate = w.gate === "passed" ? badge("passed", "ok") : w.gate === "tripped" ? badge("tripped", "bad")
      : w.gate === "missed" ? badge("missed", "warn") : badge(w.opened ? "waiting" : "not open", w.opened ? "busy" : "");
    return el("tr", { "data-wave": w.number },
      el("th", { scope: "row", text: `Wave ${w.number}${w.number === d.current_wave && !d.scheduled && (d.status === "active" || d.status === "paused") ? " (open)" : ""}` }),
      el("td", { text: w.spec }),
      el("td", { class: "num", text: w.size }),
      el("td", { class: "num", text: w.remedied }),
      el("td", { class: "num", text: w.needed }),
      el("td", { class: "num", text: w.errors }),
      el("td", {}, gate),
      el("td", {}, progressBar([[w.remedied, "c-ok"], [w.errors, "c-bad"]], w.size, `wave ${w.number}: ${w.remedied} remedied, ${w.errors} errors of ${w.size}`)));
  }));
  const f = d.failures;
  setText("fail-summary", f.total
    ? `${f.total} car${f.total > 1 ? "s" : ""} failed, rolled back or timed out now (${pct(f.total, d.population)} of the recall). Shares below are of the campaign's cars with that value.`
    : "No failures.");
  $("fail-detail").hidden = !f.total;
  $("fail-shares").replaceChildren(
    shareList("By reason", f.by_reason), shareList("By model", f.by_model),
    shareList("By hardware id", f.by_hardware_id), shareList("By software version", f.by_software_version),
    ...(f.by_failed_ecu.length ? [shareList("By failing ECU", f.by_failed_ecu)] : []));
  fill(document.querySelector("#fail-groups tbody"), f.groups.map((g) =>
    el("tr", {}, el("td", {}, stateBadge(g.state)), el("td", {}, reasonWords(g.reason, g.reason_text)), el("td", { text: g.model }),
      el("td", { class: "mono", text: g.hardware_id }), el("td", { class: "mono", text: g.software_version }), el("td", { class: "num", text: g.cars }))));
  fill(document.querySelector("#fail-recent tbody"), f.recent.map((c) =>
    el("tr", {}, el("td", { class: "mono" }, el("a", { href: `/ui/vehicles/${encodeURIComponent(c.vin)}`, text: c.vin })),
      el("td", {}, stateBadge(c.state)), el("td", {}, reasonWords(c.reason, c.reason_text)), el("td", { text: c.model }),
      el("td", { class: "mono", text: c.software_version }), el("td", { text: fmtTime(c.updated_at) }))));
}

// A status reason after its status word: "paused" + "paused by olga: why" reads "paused by olga: why".
function afterStatus(status, reason) {
  return reason.startsWith(`${status} `) ? reason.slice(status.length + 1) : reason;
}

// What each campaign button does, said before it is done; ``reason``: "required", "optional" or none.
const CAMPAIGN_ACTIONS = {
  pause: { path: "pause", done: "Paused", confirm: "Pause", title: "Pause campaign", reason: "required", when: ["active"],
    what: "No car is notified or retried until someone resumes it; cars already installing finish and report." },
  resume: { path: "resume", done: "Resumed", confirm: "Resume", title: "Resume campaign", reason: "optional", when: ["paused"],
    what: "Cars are notified again, wave by wave; the open wave's errors so far count as seen." },
  cancel: { path: "cancel", done: "Cancelled", confirm: "Cancel the campaign", title: "Cancel campaign", reason: "required", when: ["active", "paused"],
    what: "Every car that has not started is withdrawn (its notice replaced by a withdrawal); cars installing finish or roll back. This cannot be undone." },
  retry: { path: "retry-failed", done: "Retried failed cars", confirm: "Retry failed cars", title: "Retry the failed cars of campaign", reason: null, when: ["active", "paused", "completed"],
    what: "Every failed, rolled-back or timed-out car gets a new notice now, within the plan's waves, rate and windows. A campaign paused by an operator or its error threshold stays paused until resumed." },
};
const OUTCOME_LABEL = {
  remedied_at_dealer: "Remedied at a dealer", inspected_not_needed: "Inspected, remedy not needed", unreachable: "Unreachable",
};
const CAR_PAGE = 50;

function showActions(status) {
  const section = $("actions");
  if (!section || !SESSION || !SESSION.may_operate) return; // viewers (and approvers) see no action at all
  section.hidden = false;
  for (const button of section.querySelectorAll("button[data-action]")) {
    button.hidden = !CAMPAIGN_ACTIONS[button.dataset.action].when.includes(status);
  }
}

function campaignActions(id, reloadCars) {
  for (const button of $("actions").querySelectorAll("button[data-action]")) {
    const spec = CAMPAIGN_ACTIONS[button.dataset.action];
    button.addEventListener("click", () => confirmAction({
      title: `${spec.title} ${id}?`,
      what: spec.what,
      confirm: spec.confirm,
      reason: spec.reason
        ? { label: `Reason (${spec.reason === "optional" ? "optional; " : ""}kept with the status and in the audit log)`, max: 1000, optional: spec.reason === "optional" }
        : null,
      run: async (reason) => {
        const { data, at } = await send(`/api/v1/campaigns/${id}/${spec.path}`, reason ? { reason } : {});
        const campaign = data.campaign || data;
        const cars = data.vehicles === undefined ? "" : ` (${data.vehicles} car${data.vehicles === 1 ? "" : "s"})`;
        const stillPaused = spec.path === "retry-failed" && data.vehicles && campaign.status === "paused"
          ? "; the campaign stays paused: Resume notifies them" : "";
        setText("action-result", `${spec.done} by ${SESSION.name} at ${fmtTime(at)}${cars}${reason ? `: ${reason}` : ""}${stillPaused}`);
        showActions(campaign.status);
        reloadCars();
      },
    }));
  }
}

function reasonWords(code, text) {
  if (!code && !text) return "–";
  if (!code || text === code) return text || code;
  return el("span", {}, text || code, " ", el("span", { class: "mono muted", text: `(${code})` }));
}

// A deferred car looks again by itself: an estimate already past says so instead of a stale time.
function nextTry(c, now = Date.now()) {
  if (!c.next_try_at) return "–";
  if (c.next_try_basis !== "agent_recheck_estimate") return `next try at ${fmtTime(c.next_try_at)}`;
  return Date.parse(c.next_try_at) > now ? `about ${fmtTime(c.next_try_at)}` : "at its next check";
}

function outcomeButton(id, c, reload) {
  const button = el("button", { type: "button", class: "small secondary", text: "Outcome…" });
  button.addEventListener("click", () => confirmAction({
    title: `Record an outcome for ${c.vin}`,
    what: `Campaign ${id}, ${[c.model, c.model_year].filter(Boolean).join(" ")}, now ${STATE_LABEL[c.state] || c.state}. It becomes the car's state, replacing an earlier outcome where one may follow another (a dealer remedy after an inspection or an unreachable record); every record stays in the audit log, which names you.`,
    confirm: "Record",
    outcome: true,
    reason: { label: "Evidence (what shows it: repair order, inspection note…)", max: 5000 },
    run: async (evidence) => {
      const outcome = $("outcome").value;
      const body = { outcome, evidence };
      if ($("reference").value.trim()) body.reference = $("reference").value.trim();
      if (outcome === "unreachable") body.reason = $("unreachable-reason").value || "other";
      const { data } = await send(`/api/v1/campaigns/${id}/vehicles/${encodeURIComponent(c.vin)}/outcome`, body);
      setText("action-result", `${OUTCOME_LABEL[outcome]}: ${data.vin} recorded by ${data.recorded_by} at ${fmtTime(data.updated_at)}`);
      reload();
    },
  }));
  return button;
}

// The campaign's cars (GET /api/v1/campaigns/{id}/vehicles): filters, cursor pages, CSV of the same filter.
function carTable(id) {
  const form = $("car-filters");
  const table = $("car-table");
  for (const [state, label] of Object.entries(STATE_LABEL)) $("f-state").append(el("option", { value: state, text: label }));
  // The filters live in the page's address too, so a filtered view can be linked or bookmarked.
  const given = new URLSearchParams(location.search);
  for (const field of form.elements) {
    if (field.name && given.get(field.name)) field.value = given.get(field.name);
  }
  let shown = null;
  let next = null;
  function query(extra) {
    const params = new URLSearchParams();
    for (const [key, value] of new FormData(form).entries()) {
      if (String(value).trim()) params.append(key, String(value).trim());
    }
    for (const [key, value] of Object.entries(extra)) params.set(key, value);
    return params;
  }
  async function load(cursor) {
    const params = query({ limit: String(CAR_PAGE) });
    if (cursor) params.set("cursor", cursor);
    $("csv").href = `/api/v1/campaigns/${id}/vehicles?${query({ format: "csv" })}`;
    const mayOperate = Boolean(SESSION && SESSION.may_operate);
    try {
      const page = await getJSON(`/api/v1/campaigns/${id}/vehicles?${params}`);
      fill(table.querySelector("tbody"), page.items.map((c) => {
        const record = el("td", { class: "op-only" }, mayOperate ? outcomeButton(id, c, () => load(shown)) : null);
        record.hidden = !mayOperate;
        return el("tr", { "data-vin": c.vin, "data-state": c.state },
          el("td", { class: "mono" }, el("a", { href: c.link || `/ui/vehicles/${encodeURIComponent(c.vin)}`, text: c.vin })),
          el("td", { text: [c.model, c.model_year].filter(Boolean).join(" ") }),
          el("td", {}, stateBadge(c.state)),
          el("td", { class: "num", text: c.wave ?? "–" }),
          el("td", {}, reasonWords(c.reason, c.reason_text)),
          el("td", { class: "num", text: c.attempts }),
          el("td", { class: "when", text: nextTry(c) }),
          el("td", { class: "mono", title: c.ecus.map((e) => `${e.serial} (${e.hardware_id}): ${e.installed_version || "–"}, ${e.source}`).join("; "),
            text: c.ecus.map((e) => e.installed_version || "–").join(", ") }),
          el("td", { class: "when", text: fmtTime(c.updated_at) }),
          record);
      }));
      showOperatorColumns(mayOperate);
      shown = cursor;
      next = page.next_cursor;
      $("cars-next").hidden = !next;
      $("cars-first").hidden = !cursor;
      setText("cars-caption", page.items.length
        ? `${page.items.length} car${page.items.length === 1 ? "" : "s"}${cursor ? " (a later page)" : ""}${next ? "; more on the next page" : ""}; open one for its whole timeline`
        : "No car matches these filters.");
      table.dataset.query = query({}).toString(); // what the table shows now (tests wait for it)
    } catch (error) {
      setText("cars-caption", `Could not load the cars: ${error.message}`);
    }
  }
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const filters = query({}).toString();
    history.replaceState(null, "", filters ? `${location.pathname}?${filters}` : location.pathname);
    load(null);
  });
  $("cars-next").addEventListener("click", () => load(next));
  $("cars-first").addEventListener("click", () => load(null));
  return () => load(shown);
}

async function campaignPage() {
  markNav("campaigns");
  await whoAmI();
  const id = Number(location.pathname.split("/").filter(Boolean).pop());
  const reloadCars = carTable(id);
  if (SESSION && SESSION.may_operate) campaignActions(id, reloadCars);
  reloadCars();
  try {
    renderCampaign(await getJSON(`/api/v1/campaigns/${id}/dashboard`));
  } catch (error) {
    setLive("off", `Could not load campaign ${id}: ${error.message}`);
    if (error.status === 404 || error.status === 422) return;
  }
  let updates = 0;
  const source = new EventSource(`/api/v1/campaigns/${id}/stream`);
  source.addEventListener("snapshot", (message) => {
    renderCampaign(JSON.parse(message.data));
    updates += 1;
    document.body.dataset.updates = String(updates);
    setLive("on", `Live · updated ${fmtTime(new Date().toISOString())}`);
  });
  source.addEventListener("error", () => {
    if (source.readyState === EventSource.CLOSED) {
      setLive("off", "Live updates stopped: reload the page (or sign in again).");
    } else {
      setLive("", "Reconnecting…");
    }
  });
}

// ---------------------------------------------------------------- customer care: one VIN

function renderTimeline(t) {
  document.title = `${t.vin} · customer care · OTA recalls`;
  setText("v-title", `${t.vin}`);
  // What each ECU runs: the car's last signed manifest with its time, or the registration's word, labelled.
  const ecus = t.ecus.map((e) => `${e.hardware_id} ${e.installed_version} (${e.serial}, ${e.source === "reported" ? `reported ${fmtTime(e.reported_at)}` : "declared at registration"})`).join(", ");
  setText("v-facts", `${[t.make, t.model, t.model_year].filter(Boolean).join(" ")} · ${t.online ? "online now" : `offline, last seen ${fmtTime(t.last_seen)}`} · ECUs: ${ecus}`);
  $("next").className = `card next-step ${t.action}`;
  setText("next-step", t.next_step);
  fill(document.querySelector("#v-campaigns tbody"), t.campaigns.map((c) =>
    el("tr", { "data-campaign": c.campaign_id },
      el("td", {}, el("span", { class: "mono", text: c.recall_number }), ` ${c.title}`),
      el("td", {}, el("a", { href: `/ui/campaigns/${c.campaign_id}`, text: `#${c.campaign_id}${c.kind === "rollback" ? " (rollback)" : ""}` }), " ",
        c.campaign_scheduled ? badge(`starts at ${fmtTime(c.starts_at, false)}`, "warn") : statusBadge(c.campaign_status)),
      el("td", {}, stateBadge(c.state), ...(c.reason || c.reason_text ? [" ", reasonWords(c.reason, c.reason_text)] : [])),
      el("td", { class: "num", text: c.attempt }),
      el("td", { text: fmtTime(c.updated_at) }),
      el("td", { text: c.next_step }))));
  $("discrepancies").hidden = t.discrepancies.length === 0;
  fill(document.querySelector("#v-discrepancies tbody"), t.discrepancies.map((d) =>
    el("tr", { "data-kind": d.kind },
      el("td", { class: "when", text: fmtTime(d.found_at) }),
      el("td", { text: d.kind.replaceAll("_", " ") }),
      el("td", { class: "mono", text: d.ecu_serial }),
      el("td", { text: d.version }),
      el("td", { text: d.detail }))));
  fill(document.querySelector("#timeline tbody"), t.entries.map((e) =>
    el("tr", { class: `kind-${e.kind}`, "data-kind": e.kind },
      el("td", { class: "when", text: fmtTime(e.at) }),
      el("td", { class: "mono", text: e.recall_number || "" }),
      el("td", { text: e.kind }),
      el("td", { text: e.summary }),
      el("td", { class: "num", text: e.attempt === null ? "" : e.attempt }),
      el("td", { text: e.source }))));
}

async function vehiclePage() {
  markNav("vehicle");
  whoAmI();
  const parts = location.pathname.split("/").filter(Boolean);
  const vin = parts.length > 2 ? decodeURIComponent(parts[2]) : "";
  const input = $("vin");
  if (!vin) {
    input.focus();
    return;
  }
  input.value = vin;
  async function load() {
    try {
      renderTimeline(await getJSON(`/api/v1/vehicles/${encodeURIComponent(vin)}/timeline`));
      $("error").hidden = true;
      $("result").hidden = false;
    } catch (error) {
      $("result").hidden = true;
      $("error").hidden = false;
      setText("error", error.status === 404 ? `No car with VIN ${vin} is registered.` : `Could not load ${vin}: ${error.message}`);
    }
  }
  $("refresh").hidden = false;
  $("refresh").addEventListener("click", load);
  await load();
}

const PAGES = { login: loginPage, campaigns: campaignsPage, campaign: campaignPage, vehicle: vehiclePage };
const run = PAGES[document.body.dataset.page];
if (run) run();
