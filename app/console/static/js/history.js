// History with filters and cursor paging (admin: /history, user: /me/history).
import { $, api, el, fmtTime, localToIso, onSubmit, query, showProblem, table } from "./api.js";

const path = document.querySelector("script[data-path]").dataset.path;
const form = $("#history-form");
const cursors = [null]; // cursors[i] opens page i
let index = 0;
let filters = {};

function readFilters(data) {
  const f = {};
  for (const [k, v] of data.entries()) {
    const value = String(v).trim();
    if (!value) continue;
    f[k] = k === "since" || k === "until" ? localToIso(value) : value;
  }
  return f;
}

async function show(i) {
  const page = await api("GET", path + query({ ...filters, cursor: cursors[i] }));
  index = i;
  cursors[i + 1] = page.next_cursor;
  cursors.length = i + 2;
  $("#entries").replaceChildren(
    table(
      ["When", "Action", "Code", "Book", "User", "By", "Details"],
      page.items.map((h) => [
        fmtTime(h.at),
        el("span", { class: "status status-" + h.action }, h.action),
        el("code", {}, h.code),
        h.book_id,
        h.user_id || "—",
        h.actor_id || "—",
        h.details && Object.keys(h.details).length ? JSON.stringify(h.details) : "",
      ]),
    ),
  );
  $("#page-label").textContent = `· page ${i + 1}`;
  $("#prev").hidden = i === 0;
  $("#next").hidden = !page.next_cursor;
}

onSubmit(form, async (data) => {
  filters = readFilters(data);
  cursors.length = 1;
  await show(0);
});

const problem = () => form.querySelector(".problem");
$("#next").addEventListener("click", () => show(index + 1).catch((e) => showProblem(problem(), e)));
$("#prev").addEventListener("click", () => show(index - 1).catch((e) => showProblem(problem(), e)));

form.requestSubmit();
