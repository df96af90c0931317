// /admin/audit: the admin audit trail (`GET /audit`) with filters by target, person and time,
// keyset pages behind "Show more"; targets and people by name, each change as before → after.
import {
  $,
  ApiError,
  allPages,
  api,
  el,
  fmtTime,
  idChip,
  isoToLocal,
  localToIso,
  money,
  named,
  onSubmit,
  query,
  showProblem,
  table,
  userCell,
  userEmails,
} from "./api.js";

const PAGE = 50;
const form = $("#audit-form");

const ACTIONS = {
  "book.create": "Created a campaign",
  "book.update": "Changed a campaign",
  "book.codes.upload": "Uploaded codes",
  "book.codes.upload.cancel": "Cancelled an upload",
  "book.codes.generate": "Generated codes",
  "book.distribute": "Distributed codes",
  "code.rollback": "Rolled back a redemption",
  "segment.create": "Created a segment",
  "segment.update": "Changed a segment",
  "segment.delete": "Deleted a segment",
  "segment.members.add": "Added people to a segment",
  "segment.members.remove": "Removed a person from a segment",
  "store.create": "Created a store",
  "store.update": "Changed a store",
  "store.delete": "Deleted a store",
  "product.create": "Created a product",
  "product.update": "Changed a product",
  "product.delete": "Deleted a product",
  "promo.create": "Created a promo",
  "promo.update": "Changed a promo",
  "promo.cancel": "Cancelled a promo",
  "promo.delete": "Deleted a promo",
  "user.role": "Changed a role",
  "user.erase": "Erased a person's data",
  "lockout.clear": "Cleared a lockout",
  "notification.retry": "Replayed a notification job",
};

// What each target type is called, where its page is, and the list that names it.
const KINDS = {
  book: { word: "Campaign", group: "Campaigns", list: "/books", page: "/admin/books/" },
  segment: { word: "Segment", group: "Segments", list: "/segments", page: "/admin/segments/" },
  promo: { word: "Promo", group: "Promos", list: "/promos", page: "/admin/promos/" },
  store: { word: "Store", group: "Stores", list: "/stores", page: null },
  product: { word: "Product", group: "Products", list: "/products", page: null },
  user: { word: "Person" },
  code: { word: "Code" },
  lockout: { word: "Lockout" },
  outbox_job: { word: "Notification job" },
};

const names = new Map(); // "type:id" → name, for everything still there
const currencies = new Map(); // product id → its currency
const promoProducts = new Map(); // promo id → its product id
let me = null;
let filters = {};
let cursor = null;
let shown = 0;

const titleOf = (o) => o.name ?? o.title ?? null;

async function loadNames() {
  const kinds = Object.entries(KINDS).filter(([, k]) => k.list);
  const lists = await Promise.all(kinds.map(([, k]) => allPages(k.list)));
  const select = $("#a-target");
  const keep = select.value;
  const groups = [];
  kinds.forEach(([type, kind], i) => {
    for (const o of lists[i]) {
      if (type === "product") currencies.set(o.id, o.currency);
      if (type === "promo") promoProducts.set(o.id, o.product_id);
    }
    const items = lists[i].map((o) => [o.id, titleOf(o) ?? o.id]).sort((a, b) => String(a[1]).localeCompare(String(b[1])));
    for (const [id, name] of items) names.set(`${type}:${id}`, name);
    if (items.length) {
      groups.push(el("optgroup", { label: kind.group }, items.map(([id, name]) => el("option", { value: `${type}:${id}` }, name))));
    }
  });
  select.replaceChildren(el("option", { value: "" }, "Anything"), ...groups);
  select.value = keep;
}

/** The people who made recent changes (and the viewer), by email, for "Made by". */
async function loadActors() {
  const recent = await api("GET", "/audit" + query({ limit: 500 }));
  const ids = [...new Set([me.id, ...recent.items.map((e) => e.actor_id).filter(Boolean)])];
  const emails = await userEmails(ids);
  const select = $("#a-actor");
  const keep = select.value || filters.actor || "";
  const others = ids
    .filter((id) => id !== me.id)
    .map((id) => [id, emails.get(id) || id])
    .sort((a, b) => a[1].localeCompare(b[1]));
  select.replaceChildren(
    el("option", { value: "" }, "Anyone"),
    el("option", { value: me.id }, `Me (${me.email})`),
    ...others.map(([id, email]) => el("option", { value: id }, email)),
  );
  if (keep && ![...select.options].some((o) => o.value === keep)) {
    select.append(el("option", { value: keep }, emails.get(keep) || keep));
  }
  select.value = keep;
}

// ---- one entry ----

const humanize = (key) => key.replace(/_(id|cents)$/, "").replace(/_/g, " ");

function nameOfId(key, value) {
  const type = key.replace(/_id$/, "");
  return typeof value === "string" && KINDS[type] ? names.get(`${type}:${value}`) : undefined;
}

/** The currency of an entry's amounts: its own, its product's, or its promo's product's. */
function currencyOf(entry) {
  const sides = [entry.after, entry.before].filter((v) => v && typeof v === "object");
  for (const side of sides) {
    if (side.currency) return side.currency;
    if (side.product_id && currencies.has(side.product_id)) return currencies.get(side.product_id);
  }
  const product = entry.target_type === "promo" ? promoProducts.get(entry.target_id) : null;
  return product ? currencies.get(product) : null;
}

/** An amount in minor units: in its currency when the entry names one, else as a number. */
function amount(minor, currency) {
  return currency ? money(minor, currency) : (Number(minor) / 100).toFixed(2);
}

/** A value as a person reads it: names for ids, local times, words for null and booleans. */
function show(key, value, entry) {
  if (value === null || value === undefined) return el("span", { class: "muted" }, "none");
  if (value === "") return el("span", { class: "muted" }, "empty");
  if (typeof value === "boolean") return value ? "yes" : "no";
  if (typeof value === "number") {
    if (key.endsWith("_cents")) return amount(value, currencyOf(entry));
    return value.toLocaleString();
  }
  if (typeof value === "string") {
    const name = nameOfId(key, value);
    if (name) return named(name, value, `${humanize(key)} id`);
    if (/^\d{4}-\d\d-\d\dT\d\d:\d\d/.test(value)) return fmtTime(value);
    return value;
  }
  return el("code", {}, JSON.stringify(value));
}

/** Before and after as a list of fields: "was → now" for an update, the values of a created
 * or a deleted object. */
function changes(entry) {
  const { before, after } = entry;
  const isObject = (v) => v && typeof v === "object" && !Array.isArray(v);
  if (!isObject(before) && !isObject(after)) {
    if (before == null && after == null) return el("span", { class: "muted" }, "—");
    return el("code", {}, JSON.stringify(after ?? before));
  }
  const was = isObject(before) ? before : {};
  const now = isObject(after) ? after : {};
  const keys = [...new Set([...Object.keys(was), ...Object.keys(now)])];
  if (!keys.length) return el("span", { class: "muted" }, "No fields changed");
  const rows = keys.map((key) => {
    let value;
    if (key in was && key in now && JSON.stringify(was[key]) !== JSON.stringify(now[key])) {
      value = [
        el("span", { class: "was" }, el("span", { class: "visually-hidden" }, "from "), show(key, was[key], entry)),
        el("span", { "aria-hidden": "true" }, " → "),
        el("span", { class: "now" }, el("span", { class: "visually-hidden" }, " to "), show(key, now[key], entry)),
      ];
    } else if (key in now) {
      value = show(key, now[key], entry);
    } else {
      value = [el("span", { class: "was" }, show(key, was[key], entry))];
    }
    return el("div", {}, el("dt", {}, humanize(key)), el("dd", {}, value));
  });
  const heading = !isObject(after) ? el("p", { class: "hint" }, "As it was:") : null;
  return el("div", {}, heading, el("dl", { class: "diff" }, rows));
}

function target(entry) {
  const kind = KINDS[entry.target_type] || { word: entry.target_type };
  const id = entry.target_id;
  let subject;
  if (entry.target_type === "user") {
    subject = userCell(id);
  } else if (entry.target_type === "code" || entry.target_type === "lockout") {
    subject = el("code", {}, id);
  } else if (entry.target_type === "outbox_job") {
    subject = `#${id}`;
  } else {
    const current = names.get(`${entry.target_type}:${id}`);
    const recorded = titleOf(entry.after || {}) ?? titleOf(entry.before || {});
    const name = current ?? recorded ?? "(no name)";
    const link = current && kind.page ? el("a", { href: kind.page + id }, name) : name;
    subject = el("span", { class: "named" }, el("span", { class: "name" }, link), " ", idChip(id, `${kind.word.toLowerCase()} id`));
  }
  return el("div", {}, el("span", { class: "hint" }, kind.word), el("div", {}, subject));
}

function row(entry) {
  return el(
    "tr",
    { dataset: { entry: entry.id }, tabindex: "-1" },
    el("td", {}, fmtTime(entry.at), el("div", { class: "hint" }, "Request ", idChip(entry.request_id, "request id"))),
    el("td", {}, entry.actor_id ? userCell(entry.actor_id) : el("span", { class: "muted" }, "the service")),
    el("td", {}, ACTIONS[entry.action] || entry.action, el("div", { class: "hint" }, el("code", {}, entry.action))),
    el("td", {}, target(entry)),
    el("td", { class: "changes" }, changes(entry)),
  );
}

// ---- pages ----

async function fetchPage() {
  const page = await api("GET", "/audit" + query({ ...filters, limit: PAGE, cursor }));
  await userEmails(
    page.items.flatMap((e) => [e.actor_id, e.target_type === "user" ? e.target_id : null]).filter(Boolean),
  );
  cursor = page.next_cursor;
  return page.items;
}

function count() {
  const what = shown === 1 ? "1 change" : `${shown.toLocaleString()} changes`;
  $("#audit-count").textContent = `${what} shown${cursor ? "; more below" : ""}.`;
  $("#audit-more").hidden = !cursor;
}

async function showFirst() {
  cursor = null;
  const items = await fetchPage();
  shown = items.length;
  $("#audit").replaceChildren(
    items.length
      ? table(["When", "Who", "Action", "Target", "Before → after"], items.map(row), "Admin changes")
      : el("p", { class: "muted" }, "No change matches these filters."),
  );
  count();
}

async function showMore() {
  const button = $("#audit-more");
  button.disabled = true;
  try {
    const items = await fetchPage();
    const rows = items.map(row);
    const headers = [...$("#audit thead").querySelectorAll("th")].map((th) => th.textContent);
    for (const tr of rows) {
      [...tr.children].forEach((cell, i) => (cell.dataset.label = headers[i]));
    }
    $("#audit tbody").append(...rows);
    shown += items.length;
    $("#audit-problem").replaceChildren();
    count();
    // The first new change takes focus: reading goes on where the new rows start.
    if (rows.length) rows[0].focus();
  } catch (err) {
    showProblem($("#audit-problem"), err);
  } finally {
    button.disabled = false;
  }
}

/** The filters as the API takes them; a problem on a field when they do not add up. */
function readFilters(data) {
  const chosen = String(data.get("target") || "");
  const typed = String(data.get("other") || "").trim();
  if (chosen && typed) {
    throw new ApiError(422, {
      detail: "Choose one target.",
      errors: [{ loc: ["other"], msg: "Pick a target above or type one here, not both." }],
    });
  }
  const out = {};
  if (chosen) out.target = chosen;
  else if (typed) {
    const uuid = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i.test(typed);
    // A code is stored upper-case; ids and `type:id` are taken as typed.
    out.target = uuid || typed.includes(":") || /^\d+$/.test(typed) ? typed : `code:${typed.toUpperCase()}`;
  }
  const actor = String(data.get("actor") || "");
  if (actor) out.actor = actor;
  const since = String(data.get("since") || "");
  if (since) out.since = localToIso(since);
  return out;
}

function rememberInUrl() {
  const url = new URL(location.href);
  url.search = query(filters);
  history.replaceState(null, "", url);
}

onSubmit(form, async (data) => {
  filters = readFilters(data);
  rememberInUrl();
  try {
    await showFirst();
    $("#audit-problem").replaceChildren();
  } catch (err) {
    $("#audit").replaceChildren(); // no rows of an earlier search under a new problem
    $("#audit-count").textContent = "";
    $("#audit-more").hidden = true;
    throw err;
  }
});

$("#audit-more").addEventListener("click", showMore);
$("#a-clear").addEventListener("click", () => {
  form.reset();
  form.requestSubmit();
});

/** Filters from the address (`?target=book:<id>` from a book's page), into the form. */
function filtersFromUrl() {
  const params = new URLSearchParams(location.search);
  const target = params.get("target") || "";
  if (target && names.has(target)) $("#a-target").value = target;
  else if (target) $("#a-other").value = target.startsWith("code:") ? target.slice(5) : target;
  const actor = params.get("actor");
  if (actor) {
    filters.actor = actor;
  }
  const since = params.get("since");
  if (since) $("#a-since").value = isoToLocal(since);
}

async function start() {
  try {
    me = await api("GET", "/auth/me");
    await loadNames();
    filtersFromUrl();
    await loadActors();
  } catch (err) {
    showProblem($("#audit-problem"), err);
  }
  form.requestSubmit();
}
start();
