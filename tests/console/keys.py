"""Keyboard-only driving for the console's journeys: Tab to a control (every stop on the way
must show where focus is), and checks on where focus lands after an action."""

from __future__ import annotations

from typing import Any

from playwright.sync_api import FileChooser, Locator, Page

# What the focused element is, whether it shows a focus ring, and whether it is on screen.
_FOCUS = """() => {
  const node = document.activeElement;
  if (!node || node === document.body || node === document.documentElement) return null;
  const style = getComputedStyle(node);
  const box = node.getBoundingClientRect();
  return {
    what: node.tagName.toLowerCase() + (node.id ? "#" + node.id : "")
      + (node.getAttribute("aria-label") ? `[${node.getAttribute("aria-label")}]` : "")
      + " " + (node.textContent || "").trim().slice(0, 40)
      + ` (outline: ${style.outlineStyle} ${style.outlineWidth})`,
    // The console's ring (3 px), not the browser's thin default nor none at all.
    ring: style.outlineStyle !== "none" && parseFloat(style.outlineWidth) >= 2,
    onScreen: box.width > 0 && box.height > 0 && box.left >= 0 && box.right <= innerWidth + 1
      && box.bottom > 0 && box.top < innerHeight,
  };
}"""


def focus_state(page: Page) -> dict[str, Any] | None:
    state: dict[str, Any] | None = page.evaluate(_FOCUS)
    return state


def assert_focus_shown(page: Page) -> None:
    """Something has focus, it shows a focus ring, and it is on the screen."""
    state = focus_state(page)
    assert state is not None, "focus is on the page body: lost after the last action"
    assert state["ring"], f"no visible focus ring on {state['what']}"
    assert state["onScreen"], f"the focused {state['what']} is off the screen"


def tab_to(page: Page, target: Locator, limit: int = 150, key: str = "Tab") -> None:
    """Press Tab (or `key`) until `target` has focus; every stop on the way must show its
    focus ring."""
    for _ in range(limit):
        if target.evaluate("node => node === document.activeElement"):
            assert_focus_shown(page)
            return
        page.keyboard.press(key)
        state = focus_state(page)
        if state is not None:
            assert state["ring"], f"no visible focus ring on {state['what']}"
    raise AssertionError(f"{target} not reached with {key}")


def shift_tab_to(page: Page, target: Locator, limit: int = 150) -> None:
    """Press Shift+Tab until `target` has focus (a control above the one focused)."""
    tab_to(page, target, limit, "Shift+Tab")


def choose(page: Page, select: Locator, label: str) -> None:
    """Pick an option of a focused-by-Tab select by typing its label (type-ahead)."""
    tab_to(page, select)
    page.keyboard.type(label)
    chosen = select.evaluate("s => s.selectedOptions[0] && s.selectedOptions[0].textContent")
    assert chosen is not None and chosen.startswith(label), (chosen, label)


def open_file_picker(page: Page, field: Locator, tries: int = 3) -> FileChooser:
    """Tab to a file field and press Space: the file picker opens.

    Playwright enables picker interception by a message it does not wait for, so a keystroke
    sent right after can reach the browser first and open an unintercepted picker (lost to
    the test, not to a user). A picker that is coming arrives within a second; after five
    quiet seconds the same keystroke is sent again, with focus checked still on the field.
    """
    choosers: list[FileChooser] = []

    def collect(chooser: FileChooser) -> None:
        choosers.append(chooser)

    page.on("filechooser", collect)
    try:
        tab_to(page, field)
        for _ in range(tries):
            assert field.evaluate("node => node === document.activeElement"), "focus left the field"
            page.keyboard.press("Space")
            for _ in range(50):
                if choosers:
                    return choosers[0]
                page.wait_for_timeout(100)  # lets Playwright deliver the picker event
        raise AssertionError(f"Space on {field} opened no file picker in {tries} tries")
    finally:
        page.remove_listener("filechooser", collect)
