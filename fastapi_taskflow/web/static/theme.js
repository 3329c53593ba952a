// Applies the saved (or the system's) colour theme before the page paints.
(function () {
  var theme = null;
  try {
    theme = window.localStorage.getItem("taskflow-theme");
  } catch (e) {
    theme = null;
  }
  if (theme !== "light" && theme !== "dark") {
    theme = window.matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light";
  }
  document.documentElement.dataset.theme = theme;
})();
