// Progressive enhancement only: every page works without this file.
(function () {
  "use strict";

  // <time data-countdown datetime="2026-12-01T00:00:00Z"> counts down to that moment.
  function formatLeft(ms) {
    if (ms <= 0) return "now";
    var s = Math.floor(ms / 1000);
    var d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
    if (d > 0) return "in " + d + "d " + h + "h";
    if (h > 0) return "in " + h + "h " + m + "m";
    return "in " + m + "m " + (s % 60) + "s";
  }

  function tick() {
    document.querySelectorAll("[data-countdown]").forEach(function (el) {
      var target = Date.parse(el.getAttribute("datetime"));
      if (!isNaN(target)) el.textContent = formatLeft(target - Date.now());
    });
  }

  // <button data-confirm="Revoke this key?"> asks before its form is sent.
  document.addEventListener("submit", function (event) {
    var button = event.submitter;
    var message = (button && button.getAttribute("data-confirm")) || event.target.getAttribute("data-confirm");
    if (message && !window.confirm(message)) event.preventDefault();
  });

  // <button data-copy="#secret"> copies that element's text.
  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-copy]");
    if (!button || !navigator.clipboard) return;
    var source = document.querySelector(button.getAttribute("data-copy"));
    if (!source) return;
    navigator.clipboard.writeText(source.textContent.trim()).then(function () {
      button.textContent = "Copied";
    }, function () {
      button.textContent = "Select and copy";
    });
  });

  document.addEventListener("DOMContentLoaded", function () {
    if (document.querySelector("[data-countdown]")) {
      tick();
      window.setInterval(tick, 1000);
    }
  });
})();
