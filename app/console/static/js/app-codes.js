// /app: my codes by book; claim; lock with a live countdown; redeem with the lock id.
import { $, actionButton, api, countdown, el, every, flash, fmtTime, onSubmit, query, showProblem, shortId } from "./api.js";

const lockKey = (code) => "cf-lock:" + code;
let stopTimers = [];

function items(result) {
  return Array.isArray(result) ? result : result.items;
}

async function allMyCodes() {
  const codes = [];
  let cursor = null;
  do {
    const page = await api("GET", "/me/codes" + query({ limit: 500, cursor }));
    codes.push(...items(page));
    cursor = Array.isArray(page) ? null : page.next_cursor;
  } while (cursor);
  return codes;
}

function codeRow(c, problem) {
  const path = `/codes/${encodeURIComponent(c.code)}`;
  const actions = el("div", { class: "actions" });
  const timer = el("span", { class: "muted" }, "—");
  if (c.status === "locked" && c.locked_until) {
    stopTimers.push(countdown(timer, c.locked_until, () => setTimeout(load, 800)));
  }
  if (c.status === "assigned") {
    actions.append(
      actionButton(`Lock ${c.code}`, async () => {
        const locked = await api("POST", `${path}/lock`, {});
        sessionStorage.setItem(lockKey(c.code), locked.lock_id);
        flash(`${c.code} is locked for you.`);
        await load();
      }, problem, { class: "secondary", "aria-label": `Lock ${c.code}` }),
    );
  }
  if (c.status === "assigned" || c.status === "locked") {
    actions.append(
      actionButton(`Redeem`, async () => {
        const body = {};
        const lockId = sessionStorage.getItem(lockKey(c.code));
        if (c.status === "locked" && lockId) body.lock_id = lockId;
        const orderRef = $("#order-ref").value.trim();
        if (orderRef) body.order_ref = orderRef;
        const r = await api("POST", `${path}/redeem`, body);
        sessionStorage.removeItem(lockKey(c.code));
        flash(`${r.code} redeemed.`);
        await load();
      }, problem, { "aria-label": `Redeem ${c.code}` }),
    );
  }
  if (c.status === "locked") {
    actions.append(
      actionButton("Unlock", async () => {
        const lockId = sessionStorage.getItem(lockKey(c.code));
        await api("POST", `${path}/unlock`, lockId ? { lock_id: lockId } : {});
        sessionStorage.removeItem(lockKey(c.code));
        await load();
      }, problem, { class: "secondary", "aria-label": `Unlock ${c.code}` }),
    );
  }
  return el(
    "tr",
    { dataset: { code: c.code, status: c.status } },
    el("td", { "data-label": "Code" }, el("code", {}, c.code)),
    el("td", { "data-label": "Status" }, el("span", { class: "status status-" + c.status }, c.status)),
    el("td", { class: "num", "data-label": "Uses left" }, c.redemptions_left ?? "∞"),
    el("td", { "data-label": "Claimed" }, fmtTime(c.assigned_at)),
    el("td", { class: "lock-timer", "data-label": "Lock" }, timer),
    el("td", { "data-label": "Actions" }, actions),
  );
}

async function load() {
  stopTimers.forEach((stop) => stop());
  stopTimers = [];
  let codes;
  try {
    codes = await allMyCodes();
    $("#codes-problem").replaceChildren();
  } catch (err) {
    showProblem($("#codes-problem"), err);
    return;
  }
  const box = $("#my-codes");
  if (!codes.length) {
    box.replaceChildren(el("p", { class: "muted" }, "You have no codes yet. Claim one above."));
    return;
  }
  const byBook = new Map();
  for (const c of codes) {
    if (!byBook.has(c.book_id)) byBook.set(c.book_id, []);
    byBook.get(c.book_id).push(c);
  }
  const problem = el("div");
  const parts = [problem];
  for (const [bookId, list] of byBook) {
    parts.push(
      el(
        "div",
        { class: "scroll" },
        el(
          "table",
          { class: "stack", dataset: { book: bookId } },
          el("caption", {}, `Book ${shortId(bookId)}`, el("span", { class: "hint" }, ` (${bookId})`)),
          el(
            "thead",
            {},
            el("tr", {}, ["Code", "Status", "Uses left", "Claimed", "Lock", "Actions"].map((h) => el("th", { scope: "col" }, h))),
          ),
          el("tbody", {}, list.map((c) => codeRow(c, problem))),
        ),
      ),
    );
  }
  box.replaceChildren(...parts);
  $("#codes-updated").textContent = "· updated " + new Date().toLocaleTimeString();
}

onSubmit($("#claim-form"), async (data) => {
  const bookId = String(data.get("book_id")).trim();
  const c = await api("POST", `/books/${encodeURIComponent(bookId)}/assign`, {});
  $("#claim-result").replaceChildren(el("p", { class: "ok" }, "Your code: ", el("code", {}, c.code)));
  await load();
});

onSubmit($("#claim-code-form"), async (data) => {
  const code = String(data.get("code")).trim();
  const c = await api("POST", `/codes/${encodeURIComponent(code)}/assign`, {});
  $("#claim-result").replaceChildren(el("p", { class: "ok" }, "Your code: ", el("code", {}, c.code)));
  await load();
});

// Codes can arrive from a distribution meanwhile; a light refresh keeps the list true.
every(20000, load);
document.addEventListener("visibilitychange", () => {
  if (!document.hidden) load();
});
