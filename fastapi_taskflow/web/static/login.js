// The sign-in form: posts JSON to ./login and opens the dashboard on success.
const form = document.getElementById("login-form");
const error = document.getElementById("login-error");
const button = form.querySelector("button");

function showError(message) {
  error.textContent = message;
  error.hidden = false;
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  error.hidden = true;
  button.disabled = true;
  const body = {
    username: form.elements.username.value,
    password: form.elements.password.value,
  };
  try {
    const response = await fetch("login", {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify(body),
      credentials: "same-origin",
    });
    if (response.ok) {
      window.location.replace("dashboard");
      return;
    }
    if (response.status === 429) {
      const wait = response.headers.get("Retry-After") || "a few";
      showError(`Too many failed attempts. Try again in ${wait} seconds.`);
    } else if (response.status === 401) {
      showError("Wrong username or password.");
    } else {
      showError(`Sign-in failed (HTTP ${response.status}).`);
    }
  } catch (e) {
    showError("The server could not be reached.");
  } finally {
    button.disabled = false;
  }
});
