// The owner's recall check (public, no token): GET /api/v1/public/recalls?vin=...
"use strict";

(function () {
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else node.setAttribute(key, String(value));
    }
    for (const child of children) {
      if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  const form = document.getElementById("lookup-form");
  const input = document.getElementById("vin");
  const error = document.getElementById("error");
  const result = document.getElementById("result");

  function showError(text) {
    result.replaceChildren();
    error.textContent = text;
    error.hidden = false;
    input.setAttribute("aria-invalid", "true");
    input.focus();
  }

  function recallCard(r) {
    const card = el("section", { class: `card recall ${r.fixed ? "fixed" : "open"}`, "data-status": r.status },
      el("h2", {}, `Recall ${r.recall_number}: ${r.title}`),
      el("p", { class: "status", text: r.status_text }),
      el("dl", {},
        el("dt", { text: "Status" }), el("dd", { text: r.remedied_on ? `${r.status_text} on ${r.remedied_on}` : r.status_text }),
        el("dt", { text: "What to do" }), el("dd", { text: r.what_to_do }),
        el("dt", { text: "The problem" }), el("dd", { text: r.summary }),
        el("dt", { text: "The risk" }), el("dd", { text: r.safety_risk }),
        el("dt", { text: "The remedy" }), el("dd", { text: r.remedy }),
        el("dt", { text: "Type" }), el("dd", { text: r.safety_recall ? "Safety recall" : "Recall" })));
    return card;
  }

  async function check(vin) {
    error.hidden = true;
    input.removeAttribute("aria-invalid");
    result.replaceChildren(el("p", { class: "muted", text: "Checking…" }));
    let response;
    try {
      response = await fetch(`/api/v1/public/recalls?vin=${encodeURIComponent(vin)}`, { headers: { Accept: "application/json" } });
    } catch (_) {
      showError("The recall service could not be reached. Please try again.");
      return;
    }
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      body = null;
    }
    if (response.status === 422) {
      const detail = body && body.detail ? String(body.detail).replace(/^(vin: )?(not a valid VIN: )?/i, "") : "";
      showError(`That is not a valid VIN: ${detail || "check it and try again"}.`.replace("..", "."));
      return;
    }
    if (response.status === 429) {
      showError("Too many checks from your connection. Please wait a minute and try again.");
      return;
    }
    if (!response.ok || !body) {
      showError("The recall service could not answer. Please try again later.");
      return;
    }
    document.title = `${body.vin}: ${body.message} · Vehicle recall check`;
    result.replaceChildren(
      el("h2", { text: `VIN ${body.vin}` }),
      el("p", { class: body.open_recalls ? "error" : "", id: "summary", text: body.message }),
      ...body.recalls.map(recallCard),
      el("p", { class: "muted", text: `Checked ${new Date(body.checked_at).toUTCString()}.` }));
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const vin = input.value.trim().toUpperCase();
    if (!vin) return;
    history.replaceState(null, "", `/lookup?vin=${encodeURIComponent(vin)}`);
    check(vin);
  });

  const initial = new URLSearchParams(location.search).get("vin");
  if (initial) {
    input.value = initial.trim().toUpperCase();
    check(input.value);
  } else {
    input.focus();
  }
})();
