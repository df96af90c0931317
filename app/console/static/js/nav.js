// The site navigation folds behind a Menu button on narrow screens.
const toggle = document.querySelector(".menu-toggle");
const nav = document.getElementById("site-nav");
const narrow = window.matchMedia("(max-width: 760px)");

function set(open) {
  toggle.setAttribute("aria-expanded", String(open));
  nav.classList.toggle("open", open);
}

toggle.addEventListener("click", () => set(toggle.getAttribute("aria-expanded") !== "true"));
nav.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && narrow.matches) {
    set(false);
    toggle.focus();
  }
});
narrow.addEventListener("change", () => set(false));
