// xscreen review UI: the only script. Toggles the server-drawn detection boxes on the bag page.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const toggle = document.getElementById("show-boxes");
  if (!toggle) return;
  toggle.addEventListener("change", () => {
    for (const img of document.querySelectorAll("img.scan")) {
      img.src = `/v1/scans/${img.dataset.scanId}/preview.png?boxes=${toggle.checked}`;
    }
  });
});
