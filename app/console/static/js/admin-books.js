// /admin: every book with live stats (numbers and a bar), and the "new book" form.
import { $, api, el, every, onSubmit, query, showProblem, statsBar, statsLegend, table } from "./api.js";
import { bookBody } from "./book-form.js";

const list = $("#books");
const more = $("#books-more");
let pages = 1;
let nextCursor = null;

function statusBadge(status) {
  return el("span", { class: "status status-" + status }, status);
}

function row(book) {
  const s = book.stats || {};
  const num = (v) => el("td", { class: "num" }, v ?? 0);
  return el(
    "tr",
    { dataset: { book: book.id } },
    el("td", {}, el("a", { href: `/admin/books/${book.id}` }, book.name)),
    el("td", {}, statusBadge(book.status)),
    num(s.total),
    num(s.unassigned),
    num(s.assigned),
    num(s.locked),
    num(s.redeemed),
    el("td", {}, statsBar(s, 120)),
  );
}

async function load() {
  const books = [];
  let cursor = null;
  try {
    for (let i = 0; i < pages; i++) {
      const page = await api("GET", "/books" + query({ limit: 100, cursor }));
      books.push(...page.items);
      cursor = page.next_cursor;
      if (!cursor) break;
    }
    nextCursor = cursor;
    $("#books-problem").replaceChildren();
  } catch (err) {
    showProblem($("#books-problem"), err);
    return;
  }
  const headers = ["Name", "Status", "Total", "Unassigned", "Assigned", "Locked", "Redeemed", "Chart"];
  const t = table(headers, books.map(row));
  t.querySelectorAll("th").forEach((th, i) => {
    if (i >= 2 && i <= 6) th.classList.add("num");
  });
  list.replaceChildren(t, statsLegend());
  more.hidden = !nextCursor;
  $("#books-updated").textContent = "· updated " + new Date().toLocaleTimeString();
}

more.addEventListener("click", () => {
  pages += 1;
  load();
});

onSubmit($("#book-form"), async (data) => {
  const book = await api("POST", "/books", bookBody(data));
  location.assign(`/admin/books/${book.id}`);
});

every(5000, load);
