// /app: my codes by book; claim; lock with a live countdown; redeem with the lock id.
import { $, actionButton, api, countdown, el, every, flash, fmtTime, idChip, onSubmit, query, replaceKeepingFocus, showProblem } from "./api.js";

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

/** Why a book's codes cannot be used now, or null when they can. */
function bookClosed(c) {
  if (c.book_active) return null;
  if (c.book_status === "paused") return "This campaign is paused: its codes cannot be used for now.";
  if (c.book_status === "archived") return "This campaign has been closed.";
  if (c.book_expires_at && new Date(c.book_expires_at) <= new Date()) return "This campaign has ended.";
  return "This campaign has not started yet.";
}

function codeRow(c, problem) {
  const path = `/codes/${encodeURIComponent(c.code)}`;
  const actions = el("div", { class: "actions" });
  const closed = c.status === "redeemed" ? null : bookClosed(c);
  if (closed) {
    actions.append(el("span", { class: "muted" }, "Not usable now"));
  }
  const timer = el("span", { class: "muted" }, "—");
  if (c.status === "locked" && c.locked_until) {
    stopTimers.push(countdown(timer, c.locked_until, () => setTimeout(load, 800)));
  }
  if (c.status === "assigned" && !closed) {
    actions.append(
      actionButton(`Lock ${c.code}`, async () => {
        const locked = await api("POST", `${path}/lock`, {});
        sessionStorage.setItem(lockKey(c.code), locked.lock_id);
        flash(`${c.code} is locked for you.`);
        await load();
      }, problem, { class: "secondary", "aria-label": `Lock ${c.code}` }),
    );
  }
  if ((c.status === "assigned" || c.status === "locked") && !closed) {
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
    el("td", { "data-label": "Status", "data-focus-after": "" }, el("span", { class: "status status-" + c.status }, c.status)),
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
    const book = list[0];
    const closed = bookClosed(book);
    parts.push(
      el(
        "div",
        { class: "campaign", dataset: { book: bookId } },
        el("h3", {}, book.book_name),
        book.book_description ? el("p", { class: "campaign-about" }, book.book_description) : null,
        el(
          "p",
          { class: "hint" },
          book.book_expires_at ? `Valid until ${fmtTime(book.book_expires_at)} · ` : "No end date · ",
          "Campaign id ",
          idChip(bookId, "campaign id"),
        ),
        closed ? el("p", { class: "notice", dataset: { closed: "" } }, closed) : null,
      ),
      el(
        "div",
        { class: "scroll" },
        el(
          "table",
          { class: "stack", dataset: { book: bookId } },
          el("caption", { class: "visually-hidden" }, `Codes of ${book.book_name}`),
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
  replaceKeepingFocus(box, ...parts);
  $("#codes-updated").textContent = "· updated " + new Date().toLocaleTimeString();
}

// The campaigns the caller may claim from, by name (`GET /me/books`).
let campaigns = [];

function describeCampaign() {
  const about = $("#claim-book-about");
  const chosen = campaigns.find((b) => b.id === $("#claim-book").value);
  if (!chosen) {
    about.textContent = campaigns.length ? "" : "No campaign is open right now.";
    return;
  }
  const parts = [];
  if (chosen.description) parts.push(chosen.description);
  parts.push(chosen.expires_at ? `Valid until ${fmtTime(chosen.expires_at)}` : "No end date");
  parts.push(
    chosen.may_claim > 0
      ? `You hold ${chosen.held}; you may claim ${chosen.may_claim} more.`
      : `You hold ${chosen.held}; you cannot claim more from this campaign.`,
  );
  about.textContent = parts.join(" · ");
}

async function loadCampaigns() {
  const select = $("#claim-book");
  const keep = select.value;
  campaigns = await api("GET", "/me/books");
  const options = campaigns.map((b) =>
    el(
      "option",
      { value: b.id, disabled: b.may_claim <= 0, selected: b.id === keep && b.may_claim > 0 },
      b.may_claim > 0 ? b.name : `${b.name} (none left for you)`,
    ),
  );
  select.replaceChildren(
    el("option", { value: "" }, campaigns.length ? "Choose a campaign…" : "No open campaign"),
    ...options,
  );
  if (keep && campaigns.some((b) => b.id === keep && b.may_claim > 0)) select.value = keep;
  describeCampaign();
}

$("#claim-book").addEventListener("change", describeCampaign);

onSubmit($("#claim-form"), async (data) => {
  $("#claim-result").replaceChildren(); // no earlier success beside a new problem
  const bookId = String(data.get("book_id")).trim();
  const name = campaigns.find((b) => b.id === bookId)?.name ?? "the campaign";
  const c = await api("POST", `/books/${encodeURIComponent(bookId)}/assign`, {});
  $("#claim-result").replaceChildren(
    el("p", { class: "ok" }, `Your code from ${name}: `, el("code", {}, c.code)),
  );
  await Promise.all([load(), loadCampaigns()]);
  focusClaimed(c.code);
});

/** After a claim, focus is on the new code's first action (Lock), where the next step is;
 * the claim's message is announced by its live region. */
function focusClaimed(code) {
  const row = document.querySelector(`#my-codes tr[data-code="${CSS.escape(code)}"]`);
  const next = row && row.querySelector("button:not([disabled])");
  const target = next || $("#claim-result p");
  if (!next) target.setAttribute("tabindex", "-1");
  target.focus();
}

loadCampaigns().catch((err) => showProblem($("#claim-form .problem"), err));

onSubmit($("#claim-code-form"), async (data) => {
  $("#claim-result").replaceChildren();
  const code = String(data.get("code")).trim();
  const c = await api("POST", `/codes/${encodeURIComponent(code)}/assign`, {});
  $("#claim-result").replaceChildren(el("p", { class: "ok" }, "Your code: ", el("code", {}, c.code)));
  await load();
  focusClaimed(c.code);
});

// Codes can arrive from a distribution meanwhile; a light refresh keeps the list true.
every(20000, load);
document.addEventListener("visibilitychange", () => {
  if (!document.hidden) load();
});
