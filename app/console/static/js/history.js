// History with filters and cursor paging (admin: /history, user: /me/history).
import { $, ApiError, api, bookNames, el, fmtTime, localToIso, named, onSubmit, query, showProblem, table, userCell, userEmails } from "./api.js";

const path = document.querySelector("script[data-path]").dataset.path;
const form = $("#history-form");
const cursors = [null]; // cursors[i] opens page i
let index = 0;
let filters = {};
let names = new Map();

function readFilters(data) {
  const f = {};
  for (const [k, v] of data.entries()) {
    const value = String(v).trim();
    if (!value) continue;
    f[k] = k === "since" || k === "until" ? localToIso(value) : value;
  }
  return f;
}

async function loadNames() {
  names = await bookNames(path === "/history");
  const select = $("#h-book");
  const keep = select.value;
  const sorted = [...names].sort((a, b) => a[1].localeCompare(b[1]));
  select.replaceChildren(
    el("option", { value: "" }, "Any"),
    ...sorted.map(([id, name]) => el("option", { value: id, selected: id === keep }, name)),
  );
}

async function show(i) {
  const page = await api("GET", path + query({ ...filters, cursor: cursors[i] }));
  // A campaign created since the names were read: read them again, once per page shown.
  if (page.items.some((h) => !names.has(h.book_id))) await loadNames();
  const admin = path === "/history";
  if (admin) await userEmails(page.items.flatMap((h) => [h.user_id, h.actor_id]));
  index = i;
  cursors[i + 1] = page.next_cursor;
  cursors.length = i + 2;
  $("#entries").replaceChildren(
    table(
      ["When", "Action", "Code", "Campaign", "User", "By", "Details"],
      page.items.map((h) => [
        fmtTime(h.at),
        el("span", { class: "status status-" + h.action }, h.action),
        el("code", {}, h.code),
        named(names.get(h.book_id) ?? "Campaign", h.book_id, "campaign id"),
        admin ? userCell(h.user_id) : "you",
        h.actor_id === h.user_id ? (admin ? "themself" : "you") : admin ? userCell(h.actor_id) : "an admin",
        h.details && Object.keys(h.details).length ? JSON.stringify(h.details) : "",
      ]),
    ),
  );
  $("#page-label").textContent = `· page ${i + 1}`;
  $("#prev").hidden = i === 0;
  $("#next").hidden = !page.next_cursor;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** A problem on the User field, said in the page's words (the API is not asked). */
function userProblem(msg) {
  return new ApiError(422, { type: "/problems/validation-error", errors: [{ loc: ["query", "user"], msg }] });
}

// The User field takes a person's email (looked up to their id) or their id itself.
async function userFilter(f) {
  const typed = f.user;
  delete f.user;
  if (!typed) return f;
  if (UUID.test(typed)) return { ...f, user_id: typed.toLowerCase() };
  if (!/^[^\s@]+@[^\s@]+$/.test(typed)) throw userProblem("Enter an email address like ana@example.com, or a user id.");
  const found = await api("GET", "/users" + query({ email: typed, limit: 1 }));
  if (!found.items.length) throw userProblem(`No account has the email ${typed}.`);
  return { ...f, user_id: found.items[0].id };
}

onSubmit(form, async (data) => {
  cursors.length = 1;
  try {
    filters = await userFilter(readFilters(data));
    await show(0);
  } catch (err) {
    $("#entries").replaceChildren();
    $("#page-label").textContent = "";
    throw err;
  }
});

const problem = () => form.querySelector(".problem");
// A page that could not be read leaves no stale rows under its problem.
function failed(err) {
  $("#entries").replaceChildren();
  $("#page-label").textContent = "";
  showProblem(problem(), err);
}
// Paging by keyboard: focus stays on the button pressed while it is there to press again;
// on the last (or first) page it moves to the list's heading, which names the page.
async function turn(button, to) {
  try {
    await show(to);
  } catch (err) {
    failed(err);
    return;
  }
  if (document.activeElement === document.body || button.hidden) {
    const heading = $("#entries-h");
    heading.setAttribute("tabindex", "-1");
    heading.focus();
  }
}
$("#next").addEventListener("click", (event) => turn(event.currentTarget, index + 1));
$("#prev").addEventListener("click", (event) => turn(event.currentTarget, index - 1));

// Campaigns by name in the filter and the table; the ids stay second.
async function start() {
  try {
    await loadNames();
  } catch (err) {
    showProblem(problem(), err);
  }
  form.requestSubmit();
}
start();
