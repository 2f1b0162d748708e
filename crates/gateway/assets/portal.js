// The AIOKA Webhooks portal's only script: a copy button next to a secret. The page works
// without it (the secret is shown as text); with it, the button appears and copies.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  for (const button of document.querySelectorAll("button[data-copy]")) {
    const target = document.getElementById(button.dataset.copy);
    const status = document.getElementById("copied");
    if (!target || !navigator.clipboard) continue;
    button.hidden = false;
    button.addEventListener("click", () => {
      navigator.clipboard.writeText(target.textContent.trim()).then(
        () => { if (status) status.textContent = "Copied."; },
        () => { if (status) status.textContent = "Could not copy: select the secret and copy it yourself."; }
      );
    });
  }
});
