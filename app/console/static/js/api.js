// Shared helpers: calling the JSON API with the session cookie, showing RFC 9457 problems,
// building DOM safely (text only, never innerHTML with data), timers and small charts.

export const API = "/api/v1";
const UNSAFE = new Set(["POST", "PUT", "PATCH", "DELETE"]);

export function cookie(name) {
  const pair = document.cookie.split("; ").find((c) => c.startsWith(name + "="));
  return pair ? decodeURIComponent(pair.slice(name.length + 1)) : "";
}

export function csrfHeaders(method) {
  return UNSAFE.has(method) ? { "X-CSRF-Token": cookie("cf_csrf") } : {};
}

export class ApiError extends Error {
  constructor(status, problem) {
    super((problem && problem.detail) || `Request failed (${status}).`);
    this.status = status;
    this.problem = problem || {};
  }
}

/** The session ended: say so above the page and keep it (and what was typed) as it is;
 * signing in again in another tab lets the next attempt here go through. */
function sessionEnded() {
  if (document.getElementById("session-ended")) return;
  const next = location.pathname + location.search;
  const bar = el(
    "div",
    { id: "session-ended", class: "notice", role: "alert" },
    "Your session has ended. What you typed is still here. ",
    el("a", { href: "/login?next=" + encodeURIComponent(next), target: "_blank", rel: "noopener" }, "Sign in again in a new tab"),
    ", then come back and try again.",
  );
  (document.querySelector("main") || document.body).prepend(bar);
}

function sessionBack() {
  const bar = document.getElementById("session-ended");
  if (bar) bar.remove();
}

export async function problemFrom(status, text) {
  try {
    return JSON.parse(text);
  } catch {
    return { status, detail: `The server answered ${status}.` };
  }
}

/** Call `/api/v1{path}`; JSON in and out. Throws ApiError carrying the problem document. */
export async function api(method, path, body) {
  const headers = { Accept: "application/json", ...csrfHeaders(method) };
  const init = { method, headers, credentials: "same-origin" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(API + path, init);
  } catch {
    throw new ApiError(0, { detail: "The service cannot be reached. Check your connection." });
  }
  if (response.status === 401) {
    sessionEnded();
    throw new ApiError(401, { detail: "Your session has ended. Sign in again, then retry." });
  }
  sessionBack();
  const text = await response.text();
  if (!response.ok) throw new ApiError(response.status, await problemFrom(response.status, text));
  return text ? JSON.parse(text) : null;
}

export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== "") q.set(k, v);
  }
  const s = q.toString();
  return s ? "?" + s : "";
}

// ---- DOM ----

/** el("td", {class: "num"}, "text", childNode) — children are text or nodes, never HTML. */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(node.dataset, v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

export function $(selector, root = document) {
  return root.querySelector(selector);
}

/** A table whose rows read as one card each on a phone (`.stack`, labels from the headers). */
export function table(headers, rows, caption) {
  const body = rows.length
    ? rows.map((r) => (r instanceof Node ? r : el("tr", {}, r.map((c) => el("td", {}, c)))))
    : [el("tr", {}, el("td", { colspan: headers.length, class: "muted" }, "Nothing yet."))];
  for (const tr of body) {
    [...tr.children].forEach((cell, i) => {
      if (cell.tagName === "TD" && !cell.dataset.label && headers[i] && !cell.hasAttribute("colspan")) cell.dataset.label = headers[i];
    });
  }
  return el(
    "div",
    { class: "scroll" },
    el(
      "table",
      { class: "stack" },
      caption ? el("caption", {}, caption) : null,
      el("thead", {}, el("tr", {}, headers.map((h) => (h ? el("th", { scope: "col" }, h) : el("td", {}))))),
      el("tbody", {}, body),
    ),
  );
}

export function flash(message) {
  const box = $("#flash");
  if (!box) return;
  box.textContent = message;
  box.classList.add("shown");
  clearTimeout(flash.timer);
  flash.timer = setTimeout(() => box.classList.remove("shown"), 6000);
}

/** Show a problem's `detail` (and its per-item errors as a table) inside `box`. */
export function showProblem(box, err) {
  box.replaceChildren();
  if (!err) return;
  const problem = err.problem || { detail: String(err.message || err) };
  const generic = String(problem.type || "").endsWith("/validation-error");
  const detail = generic ? "Some values were not accepted." : problem.detail || err.message;
  box.append(el("p", { class: "error", role: "alert" }, detail));
  if (Array.isArray(problem.errors) && problem.errors.length) {
    const first = problem.errors[0];
    if ("line" in first) {
      box.append(
        table(
          ["Line", "Code", "Reason"],
          problem.errors.map((e) => [e.line, e.code ?? "", e.reason ?? e.msg ?? ""]),
          "Lines with errors",
        ),
      );
    } else {
      box.append(
        el(
          "ul",
          { class: "errors" },
          problem.errors.map((e) =>
            el("li", {}, plainMessage(e.msg)),
          ),
        ),
      );
    }
  }
  if (Array.isArray(problem.codes) && problem.codes.length) {
    box.append(
      table(
        ["Line", "Code"],
        problem.codes.map((c) => [c.line, c.code]),
        "Codes already in another book",
      ),
    );
  }
}

// ---- errors on the field they belong to ----

const PLAIN = [
  [/^Field required/, () => "This field is required."],
  [/^Input should be a valid integer/, () => "Enter a whole number."],
  [/^Input should be a valid number/, () => "Enter a number."],
  [/^Input should be greater than or equal to (\S+)/, (m) => `Enter ${m[1]} or more.`],
  [/^Input should be greater than (\S+)/, (m) => `Enter more than ${m[1]}.`],
  [/^Input should be less than or equal to (\S+)/, (m) => `Enter ${m[1]} or less.`],
  [/^Input should be less than (\S+)/, (m) => `Enter less than ${m[1]}.`],
  [/^String should have at most (\d+) characters?/, (m) => `Use at most ${m[1]} characters.`],
  [/^String should have at least 1 character/, () => "This field is required."],
  [/^String should have at least (\d+) characters/, (m) => `Use at least ${m[1]} characters.`],
  [/^Input should be a valid UUID/, () => "This is not a valid id."],
  [/^String should match pattern/, () => "This has characters that are not allowed here."],
  [/^value is not a valid email address/, () => "Enter an email address like ana@example.com."],
  [/^Input should be a valid datetime/, () => "Enter a date and time."],
  [/^Input should be a valid boolean/, () => "Choose yes or no."],
  [/^Input should be a valid dictionary/, () => "Enter a JSON object, like {\"key\": \"value\"}."],
];

function labelOf(field) {
  const label = field.id ? document.querySelector(`label[for="${CSS.escape(field.id)}"]`) : null;
  const text = label ? [...label.childNodes].filter((n) => n.nodeType === Node.TEXT_NODE).map((n) => n.textContent).join("").trim() : "";
  return text || field.name;
}

/** A validation message in plain words: no parser prefixes, field names as their labels. */
export function plainMessage(msg, form) {
  let text = String(msg || "This value is not accepted.").replace(/^(Value error|Assertion failed),\s*/i, "");
  for (const [pattern, say] of PLAIN) {
    const m = text.match(pattern);
    if (m) return say(m);
  }
  if (form) {
    for (const field of form.elements) {
      if (field.name && field.name.includes("_") && text.includes(field.name)) {
        text = text.split(field.name).join(`“${labelOf(field)}”`);
      }
    }
  }
  text = text.charAt(0).toUpperCase() + text.slice(1);
  return /[.!?]$/.test(text) ? text : text + ".";
}

/** The form control a problem's `errors[i]` belongs to: by `loc`, else named in the message. */
function fieldFor(form, error) {
  const named = (name) => {
    if (typeof name !== "string") return null;
    if (form.elements[name] instanceof Element) return form.elements[name];
    return form.querySelector(`[data-field="${CSS.escape(name)}"]`);
  };
  const loc = Array.isArray(error.loc) ? error.loc : [];
  for (let i = loc.length - 1; i >= 0; i--) {
    const field = named(loc[i]);
    if (field) return field;
  }
  const msg = String(error.msg || "");
  const mentioned = [...form.elements]
    .filter((f) => f.name && msg.includes(f.name))
    .sort((a, b) => msg.indexOf(a.name) - msg.indexOf(b.name));
  return mentioned[0] || null;
}

/** Remove the field messages and invalid marks of an earlier attempt. */
export function clearFieldErrors(form) {
  for (const note of form.querySelectorAll(".field-error")) note.remove();
  for (const field of form.querySelectorAll("[aria-invalid]")) {
    field.removeAttribute("aria-invalid");
    const before = field.dataset.describedby;
    if (before) field.setAttribute("aria-describedby", before);
    else field.removeAttribute("aria-describedby");
    delete field.dataset.describedby;
  }
}

/** Put each error on its field (one message a field); returns the errors no field took. */
export function showFieldErrors(form, problem) {
  const rest = [];
  const marked = [];
  for (const error of problem.errors || []) {
    const field = "line" in error ? null : fieldFor(form, error);
    if (!field) {
      rest.push(error);
      continue;
    }
    if (field.getAttribute("aria-invalid") === "true") continue;
    const id = `${field.id || field.name}-error`;
    const note = el("p", { class: "field-error", id }, plainMessage(error.msg, form));
    field.dataset.describedby = field.getAttribute("aria-describedby") || "";
    field.setAttribute("aria-describedby", [field.dataset.describedby, id].filter(Boolean).join(" "));
    field.setAttribute("aria-invalid", "true");
    field.insertAdjacentElement("afterend", note);
    marked.push(field);
  }
  if (marked.length) marked[0].focus();
  return { rest, marked };
}

/** Submit handler with a busy button; problems on their fields, the rest in `.problem`. */
export function onSubmit(form, handler) {
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = form.querySelector("button[type=submit], button:not([type])");
    const box = form.querySelector(".problem") || form.appendChild(el("div", { class: "problem" }));
    box.replaceChildren();
    clearFieldErrors(form);
    const buttonHadFocus = button && document.activeElement === button;
    if (button) button.disabled = true;
    form.setAttribute("aria-busy", "true");
    try {
      await handler(new FormData(form), event);
    } catch (err) {
      const problem = err && err.problem;
      const { rest, marked } = problem && Array.isArray(problem.errors) ? showFieldErrors(form, problem) : { rest: null, marked: [] };
      if (marked.length && !rest.length) {
        const names = marked.map(labelOf).join(", ");
        box.append(el("p", { class: "error", role: "alert" }, `Please check ${marked.length > 1 ? "these fields" : "this field"}: ${names}.`));
      } else if (marked.length) {
        showProblem(box, new ApiError(err.status, { ...problem, errors: rest }));
      } else {
        showProblem(box, err);
      }
    } finally {
      if (button) button.disabled = false;
      form.removeAttribute("aria-busy");
      // Disabling the focused button dropped focus to the page; unless the handler put it
      // somewhere (a field with a problem, a confirmation), it goes back to the button. A
      // form sent by a script (a page's first search) takes no focus.
      const lost = !document.activeElement || document.activeElement === document.body;
      if (buttonHadFocus && lost && button.isConnected) button.focus();
    }
  });
}

/** A button that runs an async action, showing any problem in `box`. */
export function actionButton(label, action, box, attrs = {}) {
  const button = el("button", { type: "button", ...attrs }, label);
  button.addEventListener("click", async () => {
    acting = { node: button, target: focusTarget(button) };
    button.disabled = true;
    try {
      if (box) box.replaceChildren();
      await action();
    } catch (err) {
      if (box) showProblem(box, err);
      else flash(err.message);
    } finally {
      button.disabled = false;
      if (acting && acting.node === button) acting = null;
      if (button.isConnected && document.activeElement === document.body) button.focus();
    }
  });
  return button;
}

// ---- values ----

export function fmtTime(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  return isNaN(d) ? iso : d.toLocaleString();
}

/** `<input type=datetime-local>` value (local time) → RFC 3339 UTC, or null when empty. */
export function localToIso(value) {
  if (!value) return null;
  return new Date(value).toISOString();
}

export function isoToLocal(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

export function intOrNull(value) {
  if (value === null || value === undefined || String(value).trim() === "") return null;
  return Number.parseInt(String(value), 10);
}

/** Digits after the decimal point in this currency (2 for EUR/USD, 0 for JPY). */
export function minorDigits(currency) {
  try {
    return new Intl.NumberFormat("en", { style: "currency", currency }).resolvedOptions().maximumFractionDigits;
  } catch {
    return 2;
  }
}

/** An amount typed in currency units ("199.99", "199,99", "200") → minor units (19999);
 * null when empty; a field problem for `field` when it is not an amount of this currency. */
export function toMinor(value, currency, field) {
  const text = String(value ?? "").trim().replace(/\s/g, "");
  if (!text) return null;
  const digits = minorDigits(currency);
  const normal = text.includes(".") ? text : text.replace(",", ".");
  const m = normal.match(/^(\d+)(?:\.(\d*))?$/);
  if (!m || (m[2] || "").length > digits) {
    const example = digits ? `12.${"5".padEnd(digits, "0")}` : "1200";
    throw new ApiError(422, {
      detail: "An amount is not valid.",
      errors: [{ loc: [field], msg: `Enter an amount in ${currency}, like ${example}.` }],
    });
  }
  const frac = (m[2] || "").padEnd(digits, "0");
  return Number.parseInt(m[1] + frac, 10);
}

/** Minor units → the amount as typed in a form ("199.99"). */
export function fromMinor(minor, currency) {
  if (minor === null || minor === undefined || minor === "") return "";
  const digits = minorDigits(currency);
  return digits ? (Number(minor) / 10 ** digits).toFixed(digits) : String(minor);
}

export function money(cents, currency = "EUR") {
  const units = cents / 10 ** minorDigits(currency);
  try {
    return new Intl.NumberFormat(undefined, { style: "currency", currency }).format(units);
  } catch {
    return units.toFixed(2) + " " + currency;
  }
}

/** The entries of `after` that differ from `before` (for PATCH bodies). */
export function changed(before, after) {
  const out = {};
  for (const [k, v] of Object.entries(after)) {
    if (JSON.stringify(v) !== JSON.stringify(before ? before[k] : undefined)) out[k] = v;
  }
  return out;
}

export function shortId(id) {
  return id ? String(id).slice(0, 8) : "";
}

// ---- timers ----

/** Live "m:ss left" in `node` until `untilIso`; calls onEnd once when it reaches zero. */
export function countdown(node, untilIso, onEnd) {
  const until = new Date(untilIso).getTime();
  node.setAttribute("role", "timer");
  const tick = () => {
    const left = Math.max(0, Math.round((until - Date.now()) / 1000));
    const m = Math.floor(left / 60);
    const s = String(left % 60).padStart(2, "0");
    node.textContent = left > 0 ? `${m}:${s} left` : "expired";
    node.dataset.seconds = String(left);
    if (left <= 0) {
      clearInterval(timer);
      if (onEnd) onEnd();
    }
  };
  const timer = setInterval(tick, 1000);
  tick();
  return () => clearInterval(timer);
}

/** Run `fn` now and every `ms` while the tab is visible. */
export function every(ms, fn) {
  const run = () => {
    if (!document.hidden) fn();
  };
  run();
  return setInterval(run, ms);
}

// ---- charts ----

const PARTS = [
  ["unassigned", "Unassigned"],
  ["assigned", "Assigned"],
  ["locked", "Locked"],
  ["redeemed", "Redeemed"],
];

/** A stacked bar of a book's codes by status, as inline SVG with a text alternative. */
export function statsBar(stats, width = 160) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} 12`);
  svg.setAttribute("preserveAspectRatio", "none");
  // Its natural width, but never wider than its box (a phone).
  svg.setAttribute("width", String(width));
  svg.classList.add("fluid");
  svg.setAttribute("height", "12");
  svg.classList.add("bar");
  svg.setAttribute("role", "img");
  const total = stats.total || 0;
  const label = PARTS.map(([k, name]) => `${name} ${stats[k] ?? 0}`).join(", ");
  svg.setAttribute("aria-label", `Codes: ${label} of ${total}`);
  const title = document.createElementNS(ns, "title");
  title.textContent = `${label} of ${total}`;
  svg.append(title);
  let x = 0;
  const bg = document.createElementNS(ns, "rect");
  bg.setAttribute("width", String(width));
  bg.setAttribute("height", "12");
  bg.setAttribute("class", "bar-empty");
  svg.append(bg);
  for (const [key] of PARTS) {
    const w = total ? ((stats[key] || 0) / total) * width : 0;
    if (w <= 0) continue;
    const rect = document.createElementNS(ns, "rect");
    rect.setAttribute("x", x.toFixed(2));
    rect.setAttribute("width", w.toFixed(2));
    rect.setAttribute("height", "12");
    rect.setAttribute("class", "bar-" + key);
    svg.append(rect);
    x += w;
  }
  return svg;
}

export function statsLegend() {
  return el(
    "ul",
    { class: "legend", "aria-hidden": "true" },
    PARTS.map(([key, name]) => el("li", {}, el("span", { class: "swatch bar-" + key }), name)),
  );
}

/** Small metric tiles: [[label, value], ...]. */
export function tiles(pairs, attrs = {}) {
  return el(
    "dl",
    { class: "tiles", ...attrs },
    pairs.map(([label, value, key]) =>
      el("div", { dataset: key ? { stat: key } : undefined }, el("dt", {}, label), el("dd", {}, value)),
    ),
  );
}

// ---- names first, ids second ----

/** An id shown second: its first characters, the whole id on hover, and a copy button. */
export function idChip(id, what = "id") {
  if (!id) return el("span", { class: "muted" }, "—");
  const button = el("button", { type: "button", class: "link copy", "aria-label": `Copy ${what} ${id}` }, "Copy");
  button.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(String(id));
      button.textContent = "Copied";
    } catch {
      button.textContent = "Select and copy";
    }
    setTimeout(() => (button.textContent = "Copy"), 2000);
  });
  return el("span", { class: "id-chip" }, el("code", { class: "id", title: String(id) }, shortId(id)), " ", button);
}

/** A name first, with its id second. */
export function named(name, id, what = "id") {
  return el("span", { class: "named" }, el("span", { class: "name" }, name || "(unnamed)"), " ", idChip(id, what));
}

/** Every page of a listing (`items` and `next_cursor`), up to `max` items. */
export async function allPages(path, params = {}, max = 5000) {
  const out = [];
  let cursor = null;
  do {
    const page = await api("GET", path + query({ ...params, limit: 500, cursor }));
    out.push(...page.items);
    cursor = page.next_cursor;
  } while (cursor && out.length < max);
  return out;
}

/** Map of book id → name: every book for an admin, the books of the caller's codes otherwise. */
export async function bookNames(admin) {
  const names = new Map();
  if (admin) {
    for (const b of await allPages("/books")) names.set(b.id, b.name);
  } else {
    for (const c of await allPages("/me/codes")) names.set(c.book_id, c.book_name);
  }
  return names;
}

/** Where focus should return to after `node` is rebuilt: its own selector (by id or accessible
 * label) and that of the row or card it sits in. */
function focusTarget(node) {
  const holder = node.closest("[data-code], [data-promo], [data-reservation]");
  let near = null;
  if (holder) {
    const [name, value] = Object.entries(holder.dataset).find(([k]) => ["code", "promo", "reservation"].includes(k));
    near = `[data-${name}="${CSS.escape(value)}"]`;
  }
  const label = node.getAttribute("aria-label");
  const key = node.id ? `#${CSS.escape(node.id)}` : label ? `${node.tagName.toLowerCase()}[aria-label="${CSS.escape(label)}"]` : null;
  return { key, near };
}

// The control whose action is running (a disabled button loses focus meanwhile).
let acting = null;

/** Rebuild `box`'s content without losing keyboard focus: the control that had it (known by
 * its id or accessible label) has it again afterwards; when an action replaced it (Lock →
 * Unlock), the first control of the same row or card has it, else that row's or card's
 * outcome. */
export function replaceKeepingFocus(box, ...nodes) {
  const active = document.activeElement;
  let target = null;
  if (active && active !== document.body && box.contains(active)) target = focusTarget(active);
  else if (acting && box.contains(acting.node)) target = acting.target;
  box.replaceChildren(...nodes);
  if (!target) return;
  const again = target.key ? box.querySelector(target.key) : null;
  if (again && !again.disabled) {
    again.focus();
    return;
  }
  const item = target.near ? box.querySelector(target.near) : null;
  if (!item) return;
  const next = item.querySelector("button:not([disabled]), a[href], input, select");
  if (next) {
    next.focus();
    return;
  }
  // The action left the row or card without a control (redeemed, bought): its outcome,
  // marked `data-focus-after`, has focus, so the keyboard does not start again at the top.
  const outcome = item.querySelector("[data-focus-after]") || item;
  outcome.setAttribute("tabindex", "-1");
  outcome.focus();
}

/** After an action took its own row or item out of a list, keyboard focus goes on from the
 * same place: to the control now at that position (`index` among those `selector` finds in
 * `box`), else the list's last one, else `fallback` (a heading or a message). */
export function focusInList(box, selector, index, fallback) {
  if (document.activeElement && document.activeElement !== document.body) return;
  const controls = [...box.querySelectorAll(selector)].filter((c) => !c.disabled);
  const target = controls[Math.min(index, controls.length - 1)] || fallback;
  if (!target) return;
  if (!target.matches("a[href], button, input, select, textarea")) target.setAttribute("tabindex", "-1");
  target.focus();
}

const emails = new Map();

/** Emails of these users (admins only), fetched once each; unknown ones are left out. */
export async function userEmails(ids) {
  const wanted = [...new Set(ids.filter((id) => id && !emails.has(id)))];
  await Promise.all(
    wanted.map(async (id) => {
      try {
        emails.set(id, (await api("GET", `/users/${id}`)).email);
      } catch (err) {
        if (err.status !== 404) throw err;
        emails.set(id, null);
      }
    }),
  );
  return emails;
}

/** A user as their email first and id second (the id alone when the email is unknown). */
export function userCell(id, known = emails) {
  if (!id) return el("span", { class: "muted" }, "—");
  const email = known.get(id);
  return email ? named(email, id, "user id") : idChip(id, "user id");
}
