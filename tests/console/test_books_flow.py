"""An admin who has never seen the API runs a coupon book from the console, and users claim,
lock and redeem codes from /app — in headless Chromium against a running service."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable

from playwright.sync_api import FilePayload, Locator, Page, expect

from tests.console.conftest import SCREENSHOTS, Accounts, LiveServer, shot, sign_in

BIG_CSV_LINES = 100_000


def _csv(codes: list[str]) -> bytes:
    return ("code\r\n" + "\r\n".join(codes) + "\r\n").encode()


def _upload(page: Page, name: str, content: bytes) -> None:
    upload: FilePayload = {"name": name, "mimeType": "text/csv", "buffer": content}
    page.get_by_label("CSV file").set_input_files(files=[upload])
    page.get_by_role("button", name="Upload", exact=True).click()


def _stat(page: Page, key: str) -> Locator:
    return page.locator(f'[data-stat="{key}"] dd')


def test_admin_runs_a_book_and_users_claim_lock_and_redeem(
    server: LiveServer, accounts: Accounts, new_page: Callable[..., Page], import_worker: None
) -> None:
    admin = accounts.create("admin")
    members = [accounts.create("user") for _ in range(3)]
    claimer = accounts.create("user")
    tag = uuid.uuid4().hex[:8].upper()

    page = new_page()
    sign_in(page, server, admin)

    # Create a book with every setting on the form.
    form = page.locator("#book-form")
    form.get_by_label("Name").fill(f"Summer {tag}")
    form.get_by_label("Description").fill("Ten percent off everything")
    form.get_by_label("Redemptions per code").fill("1")
    form.get_by_label("Lock time (seconds)").fill("120")
    form.get_by_label("Metadata").fill('{"campaign": "summer"}')
    form.get_by_role("button", name="Create book").click()
    expect(page).to_have_url(re.compile(r"/admin/books/[0-9a-f-]{36}$"))
    book_id = page.url.rsplit("/", 1)[1]
    expect(page.locator("#book-name")).to_have_text(f"Summer {tag}")
    settings = page.locator("#edit-form")
    expect(settings.get_by_label("Lock time (seconds)")).to_have_value("120")
    settings.get_by_label("Lock time (seconds)").fill("150")
    settings.get_by_role("button", name="Save settings").click()
    expect(page.locator("#flash")).to_have_text("Settings saved.")

    # A large CSV streams up with a progress bar, then the counts are shown.
    codes = [f"S{tag}-{i:06d}" for i in range(BIG_CSV_LINES)]
    page.evaluate(
        """() => {
          window.seenProgress = [];
          new MutationObserver(() => window.seenProgress.push(
            Number(document.querySelector("#upload-bar").value))
          ).observe(document.querySelector("#upload-bar"), {attributes: true});
        }"""
    )
    # A slow uplink (about 1 MB/s) so the bar has something to show.
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send(
        "Network.emulateNetworkConditions",
        {"offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": 1_000_000},
    )
    _upload(page, "codes.csv", _csv([*codes, codes[0]]))
    # The file is stored (202), then the page follows the import job to its end.
    result = page.locator("#upload-result")
    expect(result.get_by_role("status")).to_have_text(
        f"{BIG_CSV_LINES:,} codes added.", timeout=60_000
    )
    expect(page.locator("#job-label")).to_have_text("Import done.")
    expect(page.locator("#job-bar")).to_have_attribute("value", "100")
    expect(page.locator("#job-cancel")).to_be_hidden()
    # Lines of the file (header and the repeated code included), inserted, duplicates.
    expect(result.get_by_role("table")).to_contain_text(f"{BIG_CSV_LINES + 2:,}")
    expect(page.locator("#upload-bar")).to_have_attribute("value", "100")
    seen = page.evaluate("window.seenProgress")
    assert any(0 < v < 100 for v in seen), seen
    cdp.send(
        "Network.emulateNetworkConditions",
        {"offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1},
    )
    expect(_stat(page, "total")).to_have_text(str(BIG_CSV_LINES))
    shot(page, "admin-upload", full_page=False)

    # A bad file is refused, with the offending line shown in a table.
    _upload(page, "bad.csv", b"code\nGOOD-1\nnot a code!\n")
    errors = page.locator("#upload-result")
    expect(errors.get_by_role("alert")).to_be_visible(timeout=30_000)
    row = errors.get_by_role("row").filter(has_text="not a code!")
    expect(row.get_by_role("cell").first).to_have_text("3")
    report = errors.get_by_role("link", name=re.compile("Download the error report"))
    href = report.get_attribute("href")
    assert href is not None
    got = page.request.get(f"{server.url}{href}")
    assert got.status == 200
    assert got.text().splitlines() == [
        "line,code,reason",
        "3,not a code!,invalid characters (allowed: A-Z a-z 0-9 - _)",
    ]
    page.locator("#upload-result").screenshot(path=str(SCREENSHOTS / "admin-upload-errors.png"))

    # A static segment with three members.
    page.get_by_role("link", name="Segments", exact=True).click()
    page.get_by_label("Name").fill(f"Members {tag}")
    page.get_by_role("button", name="Create segment").click()
    expect(page).to_have_url(re.compile(r"/admin/segments/[0-9a-f-]{36}$"))
    page.get_by_label("User ids").fill("\n".join(str(m.id) for m in members))
    page.get_by_role("button", name="Add members").click()
    for member in members:
        expect(page.locator("#members")).to_contain_text(member.email)

    # Distribute: one code per member; the stats follow.
    page.goto(f"{server.url}/admin/books/{book_id}")
    page.get_by_role("combobox", name="Segment").select_option(label=f"Members {tag} (static)")
    # A preview first: the audience and what will happen, then a confirmation.
    page.get_by_role("button", name="Preview distribution").click()
    confirm = page.locator("#distribute-confirm")
    expect(confirm).to_be_focused()
    expect(confirm.get_by_role("heading")).to_have_text(f"Distribute to Members {tag} (static)?")
    expect(page.locator("#dist-summary")).to_have_text("3 people: 3 will get a code.")
    expect(page.locator("#dist-details li")).to_have_text(
        [f"{BIG_CSV_LINES:,} codes of this book not handed out yet."]
    )
    expect(page.locator("#dist-repeat")).to_be_hidden()
    shot(confirm, "admin-distribute-preview")
    expect(_stat(page, "assigned")).to_have_text("0")
    confirm.get_by_role("button", name="Distribute 3 codes").click()
    expect(page.locator("#distribute-result")).to_contain_text("3 codes assigned.")
    expect(page.locator("#distribute-result p")).to_be_focused()
    expect(_stat(page, "assigned")).to_have_text("3")
    # The report follows: a chart of the day's activity, and the same numbers as a table.
    report = page.locator("#report")
    expect(report).to_have_attribute(
        "data-summary", re.compile(r"Assigned 3, Locked 0, Redeemed 0")
    )
    expect(report.get_by_role("img")).to_have_attribute("aria-label", re.compile("Assigned 3"))
    report.get_by_text("Show the numbers as a table").click()
    expect(report.get_by_role("table").locator("tbody tr")).to_have_count(1)
    expect(report.get_by_role("table").locator("tbody td").first).to_have_text("3")
    shot(page.locator("#report").locator(".."), "admin-book-report")
    # A quick repeat warns, and here nobody would get a second code.
    page.get_by_role("button", name="Preview distribution").click()
    expect(page.locator("#dist-summary")).to_have_text(
        "3 people: 0 will get a code, 3 already at their limit."
    )
    expect(page.locator("#dist-repeat")).to_contain_text("were distributed")
    expect(page.locator("#dist-details li").nth(1)).to_have_text(
        "3 people already hold a code of this book."
    )
    expect(page.locator("#dist-repeat")).to_contain_text("(3 codes)")
    expect(confirm.get_by_role("button", name="Nobody would get a code")).to_be_disabled()
    confirm.get_by_role("button", name="Cancel").click()
    expect(confirm).to_be_hidden()
    expect(page.locator("#dist-segment")).to_be_focused()
    shot(page, "admin-book", full_page=False)

    # A member sees the distributed code; another user claims one from the book by id.
    member_page = new_page(390, 844)
    sign_in(member_page, server, members[0], "/app")
    expect(member_page.locator("#my-codes tbody tr")).to_have_count(1)

    user_page = new_page(390, 844)
    sign_in(user_page, server, claimer, "/app")
    # The campaign is picked by name; its description, end and the caller's allowance show.
    campaign = user_page.get_by_label("Campaign", exact=True)
    campaign.select_option(label=f"Summer {tag}")
    expect(user_page.locator("#claim-book-about")).to_contain_text("Ten percent off everything")
    expect(user_page.locator("#claim-book-about")).to_contain_text(
        "You hold 0; you may claim 1 more."
    )
    user_page.get_by_role("button", name="Claim a code from this campaign").click()
    expect(user_page.locator("#claim-result")).to_contain_text(f"Your code from Summer {tag}:")
    claimed = user_page.locator("#claim-result code").inner_text()
    code_row = user_page.locator(f'tr[data-code="{claimed}"]')
    expect(code_row).to_have_attribute("data-status", "assigned")

    # Lock: a live countdown to locked_until.
    code_row.get_by_role("button", name=f"Lock {claimed}").click()
    expect(code_row).to_have_attribute("data-status", "locked")
    timer = code_row.get_by_role("timer")
    expect(timer).to_have_text(re.compile(r"^[12]:\d\d left$"))
    first = int(timer.get_attribute("data-seconds") or "0")
    user_page.wait_for_timeout(2100)
    assert int(timer.get_attribute("data-seconds") or "0") < first
    shot(user_page, "app-codes-locked")

    # Redeem with the lock.
    user_page.get_by_label("Order reference").fill("ORDER-1")
    code_row.get_by_role("button", name=f"Redeem {claimed}").click()
    expect(code_row).to_have_attribute("data-status", "redeemed")
    shot(user_page, "app-codes-redeemed")

    # The codes are grouped under the campaign's name and description, the id second.
    group = user_page.locator(f'.campaign[data-book="{book_id}"]')
    expect(group.get_by_role("heading", name=f"Summer {tag}")).to_be_visible()
    expect(group).to_contain_text("Ten percent off everything")
    expect(group.locator("code.id")).to_have_text(book_id[:8])

    # One code per user: the campaign is still listed, but cannot be picked again.
    expect(campaign.locator("option", has_text=f"Summer {tag}")).to_have_text(
        f"Summer {tag} (none left for you)"
    )
    expect(campaign.locator("option", has_text=f"Summer {tag}")).to_be_disabled()

    # The admin's stats show the redemption and the claim without a reload.
    expect(_stat(page, "redeemed")).to_have_text("1")
    expect(_stat(page, "assigned")).to_have_text("3")
    page.get_by_label("Code", exact=True).fill(claimed.lower())
    page.get_by_role("button", name="Find").click()
    history = page.locator("#find-result")
    expect(history).to_contain_text("redeemed")
    expect(history).to_contain_text("locked")
    expect(history).to_contain_text("assigned")

    # The order was cancelled: roll the redemption back from the code's history.
    # The find-a-code tables name people by email, their ids second.
    expect(history).to_contain_text(claimer.email)
    history.get_by_role("button", name="Roll back").click()
    reason = history.get_by_label("Reason for the rollback")
    expect(reason).to_be_focused()
    reason.fill("order cancelled")
    history.get_by_role("button", name="Confirm roll back").click()
    expect(history).to_contain_text("rolled_back")
    expect(page.locator("#flash")).to_contain_text("Redemption rolled back")
    expect(page.locator("#find-code")).to_be_focused()
    rolled = accounts.fetch(
        "SELECT details->>'reason' AS reason FROM redemption_history "
        "WHERE action = 'rolled_back' AND book_id = $1",
        uuid.UUID(book_id),
    )
    assert [r["reason"] for r in rolled] == ["order cancelled"]
    expect(_stat(page, "redeemed")).to_have_text("0")
    expect(_stat(page, "assigned")).to_have_text("4")

    # The books list shows the live numbers too.
    page.get_by_role("link", name="Books", exact=True).click()
    book_row = page.locator(f'tr[data-book="{book_id}"]')
    expect(book_row).to_contain_text(f"Summer {tag}")
    expect(book_row.get_by_role("img")).to_have_attribute(
        "aria-label", re.compile("Assigned 4, Locked 0, Redeemed 0")
    )
    shot(page, "admin-books")
