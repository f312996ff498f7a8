// Live parts of the console: every 2 s, swap in the fragments the server renders (already
// escaped) for elements that carry data-live. Without JavaScript the pages still work.
"use strict";
(function () {
  var PERIOD = 2000;
  function poll(element, apply) {
    var url = element.getAttribute("data-live");
    var busy = false;
    function tick() {
      if (busy || document.hidden) return;
      busy = true;
      fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (data) { if (data) apply(data); })
        .catch(function () {})
        .then(function () { busy = false; });
    }
    setInterval(tick, PERIOD);
  }
  document.addEventListener("DOMContentLoaded", function () {
    var rows = document.getElementById("rows");
    if (rows && rows.hasAttribute("data-live")) {
      poll(rows, function (data) {
        if (rows.contains(document.activeElement)) return; // keep the keyboard's place
        rows.innerHTML = data.rows;
        var counts = document.getElementById("counts");
        if (counts) counts.innerHTML = data.counts;
      });
    }
    var timeline = document.getElementById("timeline");
    if (timeline && timeline.hasAttribute("data-live")) {
      poll(timeline, function (data) {
        if (timeline.contains(document.activeElement) && document.activeElement.tagName === "BUTTON") return;
        timeline.innerHTML = data.timeline;
      });
    }
  });
})();
