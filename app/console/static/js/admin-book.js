// /admin/books/{id}: live stats, status, CSV upload as an import job with progress and cancel,
// generate, distribute,
// code search with history, the codes table and the settings form.
import {
  $,
  API,
  ApiError,
  actionButton,
  api,
  changed,
  clearFieldErrors,
  cookie,
  el,
  every,
  flash,
  fmtTime,
  idChip,
  onSubmit,
  userCell,
  userEmails,
  problemFrom,
  query,
  showFieldErrors,
  showProblem,
  statsBar,
  statsLegend,
  table,
  tiles,
} from "./api.js";
import { bookBody, fillBookForm } from "./book-form.js";
import { drawReport } from "./charts.js";
import { notText } from "./file-check.js";

const bookId = $("#book").dataset.bookId;
const base = `/books/${bookId}`;
let formFilled = false;
let shown = null; // the settings as last filled, so PATCH sends only edits

function fill(book) {
  fillBookForm($("#edit-form"), book);
  shown = bookBody(new FormData($("#edit-form")), true);
}

$("#export").href = `${API}${base}/codes.csv`;

function renderStats(book) {
  const s = book.stats || {};
  $("#book-name").textContent = book.name;
  if (!$("#book-id").firstChild) $("#book-id").append(idChip(book.id, "book id"));
  document.title = `${book.name} · Coupon console`;
  $("#book-status").replaceChildren(el("span", { class: "status status-" + book.status }, book.status));
  $("#stats").replaceChildren(
    tiles(
      [
        ["Total", s.total ?? 0, "total"],
        ["Unassigned", s.unassigned ?? 0, "unassigned"],
        ["Assigned", s.assigned ?? 0, "assigned"],
        ["Locked", s.locked ?? 0, "locked"],
        ["Redeemed", s.redeemed ?? 0, "redeemed"],
      ],
      { id: "stat-tiles" },
    ),
    statsBar(s, 600),
    statsLegend(),
  );
  document.querySelectorAll("#status-actions [data-status]").forEach((b) => {
    b.disabled = b.dataset.status === book.status;
  });
  $("#stats-updated").textContent = "· updated " + new Date().toLocaleTimeString();
}

async function refresh() {
  try {
    const book = await api("GET", base);
    renderStats(book);
    if (!formFilled) {
      fill(book);
      formFilled = true;
    }
  } catch (err) {
    showProblem($("#status-problem"), err);
  }
}

document.querySelectorAll("#status-actions [data-status]").forEach((button) => {
  button.addEventListener("click", async () => {
    const status = button.dataset.status;
    if (status === "archived" && !confirm("Archive this book? Its codes can no longer be used.")) return;
    try {
      renderStats(await api("PATCH", base, { status }));
      $("#status-problem").replaceChildren();
      flash(`Book is now ${status}.`);
    } catch (err) {
      showProblem($("#status-problem"), err);
    }
  });
});

onSubmit($("#edit-form"), async (data) => {
  const body = changed(shown, bookBody(data, true));
  if (!Object.keys(body).length) {
    flash("Nothing changed.");
    return;
  }
  const book = await api("PATCH", base, body);
  renderStats(book);
  fill(book);
  flash("Settings saved.");
});

// ---- upload: the browser streams the file (XHR reports upload progress); the service
// stores it and answers 202 with an import job, which this page then follows ----

const uploadSection = $("#upload-h").closest("section");

/** Put focus on an upload's outcome, unless the user has moved on to another part of the
 * page meanwhile (a long import must not pull them back). */
function focusOutcome(node) {
  if (!node) return;
  const at = document.activeElement;
  if (at && at !== document.body && !uploadSection.contains(at)) return;
  node.setAttribute("tabindex", "-1");
  node.focus();
}

function uploadFile(file) {
  const wrap = $("#upload-progress");
  const bar = $("#upload-bar");
  const label = $("#upload-label");
  const result = $("#upload-result");
  const button = $("#upload-form button[type=submit]");
  result.replaceChildren();
  $("#job").hidden = true;
  wrap.hidden = false;
  bar.value = 0;
  label.textContent = "Starting upload…";
  button.disabled = true;
  const xhr = new XMLHttpRequest();
  xhr.open("POST", `${API}${base}/imports`);
  xhr.setRequestHeader("Content-Type", "text/csv");
  xhr.setRequestHeader("Accept", "application/json");
  xhr.setRequestHeader("X-CSRF-Token", cookie("cf_csrf"));
  xhr.upload.addEventListener("progress", (e) => {
    if (!e.lengthComputable) return;
    const pct = Math.round((e.loaded / e.total) * 100);
    bar.value = pct;
    label.textContent = `Uploaded ${pct}% (${(e.loaded / 1048576).toFixed(1)} of ${(e.total / 1048576).toFixed(1)} MB)`;
  });
  xhr.upload.addEventListener("load", () => {
    bar.value = 100;
    label.textContent = "Uploaded. Storing the file…";
  });
  xhr.addEventListener("load", async () => {
    button.disabled = false;
    if (xhr.status === 202) {
      label.textContent = "File stored.";
      watchJob(JSON.parse(xhr.responseText));
    } else {
      if (xhr.status === 401) location.assign("/login?next=" + encodeURIComponent(location.pathname));
      label.textContent = "Upload refused.";
      showProblem(result, new ApiError(xhr.status, await problemFrom(xhr.status, xhr.responseText)));
      focusOutcome(result.querySelector(".error"));
    }
  });
  xhr.addEventListener("error", () => {
    button.disabled = false;
    label.textContent = "Upload failed.";
    showProblem(result, new ApiError(0, { detail: "The upload did not reach the service. Check your connection and retry (retrying is safe)." }));
    focusOutcome(result.querySelector(".error"));
  });
  xhr.send(file);
}

const uploadForm = $("#upload-form");

uploadForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  clearFieldErrors(uploadForm);
  const file = $("#csv-file").files[0];
  if (!file) return;
  // Only text goes up: an image or a spreadsheet is refused here, on the field.
  const problem = await notText(file);
  if (problem) {
    $("#upload-result").replaceChildren();
    $("#upload-progress").hidden = true;
    $("#job").hidden = true;
    showFieldErrors(uploadForm, { errors: [{ loc: ["file"], msg: problem }] });
    return;
  }
  uploadFile(file);
});
$("#csv-file").addEventListener("change", () => clearFieldErrors(uploadForm));

// ---- the import job: progress from GET /imports/{id}, cancel, the error report ----

const FINISHED = new Set(["done", "failed", "cancelled"]);
const STATE_TEXT = {
  received: "Waiting for a worker",
  queued: "Waiting for another import of this book to finish",
  validating: "Checking the file",
  inserting: "Storing the codes",
};
let watching = null;

/** Why an import that succeeded stored no code: said as a fact, not as a success. */
function nothingAdded(job) {
  const n = (v) => Number(v).toLocaleString();
  const distinct = job.already_present;
  if (distinct > 0) {
    const all = distinct === 1 ? "the only code in this file is" : `the ${n(distinct)} codes in this file are`;
    return `No codes added: ${all} already in this book.`;
  }
  return "No codes added: the file holds no codes.";
}

function renderJob(job) {
  const n = (v) => Number(v).toLocaleString();
  $("#job").hidden = false;
  $("#job-bar").value = Math.round(job.progress * 100);
  const what = job.kind === "generate" ? "codes" : "lines";
  $("#job-label").textContent = FINISHED.has(job.state)
    ? `Import ${job.state}.`
    : `${STATE_TEXT[job.state] || job.state}: ${Math.round(job.progress * 100)}% (${n(job.lines_done)} of ${n(job.lines_total)} ${what})`;
  $("#job-cancel").hidden = FINISHED.has(job.state);
  $("#job-cancel").dataset.jobId = job.id;
  const result = $("#upload-result");
  if (job.state === "done") {
    result.replaceChildren(
      job.inserted > 0
        ? el("p", { class: "ok", role: "status" }, `${n(job.inserted)} ${job.inserted === 1 ? "code" : "codes"} added.`)
        : el("p", { role: "status" }, nothingAdded(job)),
      table(
        ["Lines", "Inserted", "Duplicates in file", "Already in book"],
        [[n(job.lines_total), n(job.inserted), n(job.duplicates_in_file), n(job.already_present)]],
        "Import result",
      ),
    );
  } else if (job.state === "failed") {
    showProblem(result, new ApiError(422, { detail: job.detail, errors: job.errors }));
    if (job.error_count) {
      result.append(
        el(
          "p",
          {},
          el("a", { href: `${API}/imports/${job.id}/errors.csv`, download: "", id: "job-errors" },
            `Download the error report (${n(job.error_count)} lines, CSV)`),
        ),
      );
    }
  } else if (job.state === "cancelled") {
    result.replaceChildren(el("p", { class: "muted", role: "status" }, "Import cancelled; nothing stored."));
  } else {
    result.replaceChildren();
  }
}

/** Show a job that has ended, once: its outcome takes focus, the stats and codes follow. */
function finishJob(job) {
  clearInterval(watching);
  watching = null;
  renderJob(job);
  focusOutcome($("#upload-result").querySelector("[role=status], [role=alert]"));
  if (job.state === "done") {
    refresh();
    loadCodes(null);
  }
}

function watchJob(job) {
  clearInterval(watching);
  if (FINISHED.has(job.state)) {
    finishJob(job);
    return;
  }
  renderJob(job);
  const timer = setInterval(async () => {
    try {
      const now = await api("GET", `/imports/${job.id}`);
      if (watching !== timer) return; // ended (cancelled) while this read was under way
      if (FINISHED.has(now.state)) finishJob(now);
      else renderJob(now);
    } catch (err) {
      showProblem($("#upload-result"), err);
    }
  }, 1000);
  watching = timer;
}

$("#job-cancel").addEventListener("click", async (event) => {
  const button = event.currentTarget;
  button.disabled = true;
  try {
    const job = await api("DELETE", `/imports/${button.dataset.jobId}`);
    if (FINISHED.has(job.state)) finishJob(job);
    else renderJob(job);
  } catch (err) {
    showProblem($("#upload-result"), err);
    focusOutcome($("#upload-result .error"));
  } finally {
    button.disabled = false;
  }
});

// ---- generate ----

onSubmit($("#generate-form"), async (data) => {
  const body = { count: Number.parseInt(data.get("count"), 10) };
  const pattern = String(data.get("pattern") || "").trim();
  const prefix = String(data.get("prefix") || "").trim();
  const length = String(data.get("length") || "").trim();
  if (pattern) body.pattern = pattern;
  if (prefix) body.prefix = prefix;
  if (length) body.length = Number.parseInt(length, 10);
  const r = await api("POST", `${base}/codes/generate`, body);
  if (r.state) {
    // Above a million codes the generation is an import job: follow it like an upload.
    $("#generate-result").replaceChildren(el("p", { class: "ok" }, "Generation started; see its progress under Upload codes."));
    watchJob(r);
    return;
  }
  $("#generate-result").replaceChildren(el("p", { class: "ok" }, `${r.inserted} codes generated.`));
  refresh();
  loadCodes(null);
});

// ---- distribute ----

async function loadSegments() {
  const select = $("#dist-segment");
  try {
    const page = await api("GET", "/segments" + query({ limit: 500 }));
    select.replaceChildren(
      el("option", { value: "" }, page.items.length ? "Choose a segment" : "No segments yet"),
      ...page.items.map((s) => el("option", { value: s.id }, `${s.name} (${s.kind})`)),
    );
  } catch (err) {
    showProblem($("#distribute-form .problem"), err);
  }
}

// A distribution to this book within this many minutes makes the next one warn.
const REPEAT_MINUTES = 15;
let pending = null; // the body the shown preview is for

const plural = (n, one, many) => `${Number(n).toLocaleString()} ${n === 1 ? one : many}`;

async function recentDistribution() {
  const since = new Date(Date.now() - REPEAT_MINUTES * 60_000).toISOString();
  const page = await api("GET", "/history" + query({ book_id: bookId, action: "assigned", since, limit: 500 }));
  const handed = page.items.filter((h) => h.details && h.details.distribute);
  return handed.length ? { count: handed.length, at: handed[0].at, more: Boolean(page.next_cursor) } : null;
}

function hideConfirm() {
  pending = null;
  $("#distribute-confirm").hidden = true;
}

onSubmit($("#distribute-form"), async (data) => {
  const body = { segment_id: data.get("segment_id") };
  const select = $("#dist-segment");
  const segmentName = select.selectedOptions[0] ? select.selectedOptions[0].textContent : "the segment";
  const [p, recent] = await Promise.all([api("POST", `${base}/distribute/preview`, body), recentDistribution()]);
  const skipped = p.skipped || {};
  $("#distribute-result").replaceChildren();
  $("#dist-problem").replaceChildren();
  $("#dist-name").textContent = segmentName;
  $("#dist-summary").textContent =
    `${plural(p.audience, "person", "people")}: ${p.would_assign} will get a code` +
    (skipped.limit_reached ? `, ${skipped.limit_reached} already at their limit` : "") +
    (skipped.exhausted ? `, ${skipped.exhausted} will get none because codes run out` : "") +
    ".";
  const details = [el("li", {}, `${plural(p.free_codes, "code", "codes")} of this book not handed out yet.`)];
  if (p.already_holding) {
    details.push(
      el("li", {}, `${plural(p.already_holding, "person already holds", "people already hold")} a code of this book` +
        (p.would_assign ? "; those under their limit will get another." : ".")),
    );
  }
  $("#dist-details").replaceChildren(...details);
  const repeat = $("#dist-repeat");
  repeat.hidden = !recent;
  repeat.textContent = recent
    ? `This book's codes were distributed ${Math.max(1, Math.round((Date.now() - new Date(recent.at)) / 60000))} minute(s) ago ` +
      `(${recent.more ? "over " : ""}${plural(recent.count, "code", "codes")}). Distributing again gives people further codes where the limit allows.`
    : "";
  const go = $("#dist-go");
  go.disabled = p.would_assign === 0;
  go.textContent = p.would_assign ? `Distribute ${plural(p.would_assign, "code", "codes")}` : "Nobody would get a code";
  pending = body;
  const box = $("#distribute-confirm");
  box.hidden = false;
  box.focus();
});

$("#dist-cancel").addEventListener("click", () => {
  hideConfirm();
  $("#dist-segment").focus();
});

$("#dist-go").addEventListener("click", async () => {
  if (!pending) return;
  const go = $("#dist-go");
  go.disabled = true;
  try {
    const r = await api("POST", `${base}/distribute`, pending);
    const skipped = r.skipped || {};
    hideConfirm();
    const result = $("#distribute-result");
    result.replaceChildren(
      el("p", { class: "ok", tabindex: "-1" }, `${plural(r.assigned, "code", "codes")} assigned.`),
      table(
        ["Assigned", "Skipped: at limit", "Skipped: no codes left", "Skipped: unknown users"],
        [[r.assigned, skipped.limit_reached ?? 0, skipped.exhausted ?? 0, skipped.unknown_users ?? 0]],
        "Distribution result",
      ),
    );
    result.querySelector("p").focus();
    refresh();
    loadReport();
  } catch (err) {
    showProblem($("#dist-problem"), err);
  } finally {
    go.disabled = false;
  }
});

$("#dist-segment").addEventListener("change", hideConfirm);

// ---- find a code and its history ----

/** "Roll back" opens a reason field and a confirmation in place (no browser prompt). */
function rollbackControl(code, redemptionId, problem) {
  const holder = el("div", { class: "rollback" });
  const id = `reason-${redemptionId}`;
  const open = el("button", { type: "button", class: "secondary" }, "Roll back");
  const form = el(
    "form",
    { class: "rollback-form", hidden: true },
    el("label", { for: id }, "Reason for the rollback ", el("span", { class: "hint" }, "(optional)")),
    el("input", { id, name: "reason", maxlength: "500", autocomplete: "off" }),
    el(
      "div",
      { class: "actions" },
      el("button", { type: "submit" }, "Confirm roll back"),
      el("button", { type: "button", class: "secondary", "data-cancel": "" }, "Cancel"),
    ),
  );
  open.addEventListener("click", () => {
    open.hidden = true;
    form.hidden = false;
    form.querySelector("input").focus();
  });
  form.querySelector("[data-cancel]").addEventListener("click", () => {
    form.hidden = true;
    open.hidden = false;
    open.focus();
  });
  onSubmit(form, async (data) => {
    const reason = String(data.get("reason") || "").trim();
    await api("POST", `/codes/${encodeURIComponent(code)}/rollback`, {
      redemption_id: redemptionId,
      ...(reason ? { reason } : {}),
    });
    problem.replaceChildren();
    await showCode(code);
    refresh();
    const status = $("#find-result td:nth-child(2)");
    flash(`Redemption rolled back; ${code} is ${status ? status.textContent : "usable again"}.`);
    $("#find-code").focus();
  });
  holder.append(open, form);
  return holder;
}

async function showCode(code) {
  const [c, history] = await Promise.all([
    api("GET", `/codes/${encodeURIComponent(code)}`),
    api("GET", "/history" + query({ code, limit: 100 })),
  ]);
  await userEmails([c.user_id, ...history.items.flatMap((h) => [h.user_id, h.actor_id])]);
  const box = $("#find-result");
  const problem = el("div");
  const actions = el("div", { class: "actions" });
  if (c.status === "locked") {
    actions.append(
      actionButton("Unlock", async () => {
        await api("POST", `/codes/${encodeURIComponent(c.code)}/unlock`, {});
        await showCode(c.code);
      }, problem, { class: "secondary" }),
    );
  }
  const rows = history.items.map((h) => {
    const cells = [fmtTime(h.at), h.action, userCell(h.user_id), userCell(h.actor_id)];
    const tr = el("tr", {}, cells.map((v) => el("td", {}, v)));
    const td = el("td");
    if (h.action === "redeemed") {
      td.append(rollbackControl(c.code, h.id, problem));
    }
    tr.append(td);
    return tr;
  });
  box.replaceChildren(
    table(
      ["Code", "Status", "User", "Assigned", "Locked until", "Redemptions", "Left"],
      [[el("code", {}, c.code), c.status, userCell(c.user_id), fmtTime(c.assigned_at), fmtTime(c.locked_until), c.redemptions, c.redemptions_left ?? "∞"]],
      "Code",
    ),
    actions,
    problem,
    table(["When", "Action", "User", "By", "Actions"], rows, "History"),
  );
}

onSubmit($("#find-form"), async (data) => {
  await showCode(String(data.get("code")).trim());
  // The answer starts below the search: bring the tool to the top of the screen, and its
  // first Roll back into view, so nobody scrolls to reach what they searched for.
  $("#find").scrollIntoView({ block: "start" });
  const rollBack = $("#find-result .rollback button");
  if (rollBack) rollBack.scrollIntoView({ block: "nearest" });
});

// ---- codes table with cursor paging ----

let codesCursor = null;

async function loadCodes(cursor) {
  const status = $("#codes-status").value;
  try {
    const page = await api("GET", `${base}/codes` + query({ status, limit: 20, cursor }));
    codesCursor = page.next_cursor;
    $("#codes").replaceChildren(
      table(
        ["Code", "Status", "User", "Assigned", "Redemptions"],
        page.items.map((c) => [el("code", {}, c.code), c.status, idChip(c.user_id, "user id"), fmtTime(c.assigned_at), c.redemptions]),
      ),
    );
    $("#codes-next").hidden = !codesCursor;
    $("#codes-first").hidden = !cursor;
  } catch (err) {
    showProblem($("#codes"), err);
  }
}

$("#codes-filter").addEventListener("submit", (e) => {
  e.preventDefault();
  loadCodes(null);
});
$("#codes-next").addEventListener("click", () => loadCodes(codesCursor));
$("#codes-first").addEventListener("click", () => loadCodes(null));

every(3000, refresh);
loadSegments();
loadCodes(null);

// ---- report ----

const BOOK_SERIES = [
  { key: "assigned", label: "Assigned", color: "#3b7dd8" },
  { key: "locked", label: "Locked", color: "#b36b00" },
  { key: "redeemed", label: "Redeemed", color: "#1d8a3d" },
  { key: "rolled_back", label: "Rolled back", color: "#a3161b" },
];

async function loadReport() {
  try {
    const report = await api("GET", `${base}/report` + query({ bucket: $("#report-bucket").value }));
    drawReport($("#report"), report, BOOK_SERIES, "Codes over time");
    $("#report-problem").replaceChildren();
  } catch (err) {
    showProblem($("#report-problem"), err);
  }
}

$("#report-bucket").addEventListener("change", loadReport);
every(30000, loadReport);
