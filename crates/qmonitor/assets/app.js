// qmonitor live updates: when the event stream says something changed,
// fetch this page again and swap in its <main>. Without JavaScript the
// pages are plain HTML and a reload shows the same.
(function () {
  "use strict";
  var url = document.body.getAttribute("data-stream");
  if (!url || !window.EventSource) return;
  var live = document.getElementById("live");
  var pending = null;
  var busy = false;
  var refreshed = 0;
  // A form the user has touched is never swapped out from under them.
  var touched = false;
  document.addEventListener("change", function (e) {
    var main = document.getElementById("main");
    if (main && main.contains(e.target)) touched = true;
  });
  function editing() {
    var a = document.activeElement;
    var main = document.getElementById("main");
    return touched || (a && main && main.contains(a) && /^(INPUT|SELECT|TEXTAREA)$/.test(a.tagName));
  }
  function refresh() {
    pending = null;
    if (busy || editing()) { pending = setTimeout(refresh, 1000); return; }
    busy = true;
    fetch(window.location.href, { credentials: "same-origin", headers: { "X-Requested-With": "qmonitor" } })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (text) {
        if (!text) return;
        var doc = new DOMParser().parseFromString(text, "text/html");
        var fresh = doc.getElementById("main");
        var main = document.getElementById("main");
        if (fresh && main && !editing()) main.innerHTML = fresh.innerHTML;
      })
      .catch(function () {})
      .then(function () {
        busy = false;
        refreshed += 1;
        document.body.setAttribute("data-refreshed", String(refreshed));
      });
  }
  var es = null;
  function connect() {
    es = new EventSource(url);
    // On (re)connecting, fetch once: what changed between this page's
    // rendering and the stream's start would be missed otherwise.
    es.addEventListener("open", function () {
      if (live) live.className = "live on";
      if (!pending) pending = setTimeout(refresh, 50);
    });
    es.addEventListener("error", function () { if (live) live.className = "live"; });
    es.addEventListener("update", function () {
      if (live) live.className = "live on";
      if (!pending) pending = setTimeout(refresh, 300);
    });
  }
  // A page left (or kept in the back/forward cache) closes its stream: the
  // browser's few connections per host stay free for the next page.
  window.addEventListener("pagehide", function () { if (es) { es.close(); es = null; } });
  window.addEventListener("pageshow", function () { if (!es) connect(); });
  connect();
})();
