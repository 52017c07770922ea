// Stepwise: small progressive enhancements. Pages work without this file.
(function () {
  "use strict";

  var closedGroups = new Set();

  function logBox() { return document.querySelector("[data-log]"); }

  function following() {
    var box = document.querySelector("[data-log-follow]");
    return !box || box.checked;
  }

  function scrollLog() {
    var log = logBox();
    if (log && following()) log.scrollTop = log.scrollHeight;
  }

  function applySearch() {
    var input = document.querySelector("[data-log-search]");
    var log = logBox();
    if (!input || !log) return;
    var needle = input.value.trim().toLowerCase();
    var lines = log.querySelectorAll(".log-line");
    for (var i = 0; i < lines.length; i++) {
      var hit = !needle || lines[i].textContent.toLowerCase().indexOf(needle) !== -1;
      lines[i].hidden = !hit;
    }
    log.classList.toggle("searching", !!needle);
  }

  function markSelected() {
    var step = new URLSearchParams(location.search).get("step") || "";
    document.querySelectorAll("[data-step-link]").forEach(function (a) {
      a.classList.toggle("selected", a.getAttribute("data-step-link") === step);
    });
  }

  function restoreGroups(root) {
    (root || document).querySelectorAll("details[data-group]").forEach(function (d) {
      if (closedGroups.has(d.getAttribute("data-group"))) d.open = false;
    });
  }

  document.addEventListener("toggle", function (event) {
    var d = event.target;
    if (!(d instanceof HTMLDetailsElement) || !d.hasAttribute("data-group")) return;
    if (d.open) closedGroups.delete(d.getAttribute("data-group"));
    else closedGroups.add(d.getAttribute("data-group"));
  }, true);

  document.addEventListener("input", function (event) {
    if (event.target.matches("[data-log-search]")) applySearch();
  });

  document.addEventListener("change", function (event) {
    if (event.target.matches("[data-log-follow]")) scrollLog();
  });

  document.addEventListener("click", function (event) {
    var copy = event.target.closest("[data-copy]");
    if (copy) {
      var field = document.querySelector(copy.getAttribute("data-copy"));
      if (field) {
        field.select();
        var done = function () { copy.textContent = "Copied"; setTimeout(function () { copy.textContent = "Copy"; }, 2000); };
        if (navigator.clipboard && window.isSecureContext) navigator.clipboard.writeText(field.value).then(done, function () { document.execCommand("copy"); done(); });
        else { document.execCommand("copy"); done(); }
      }
    }
    var link = event.target.closest("[data-step-link]");
    if (link) {
      document.querySelectorAll("[data-step-link].selected").forEach(function (a) { a.classList.remove("selected"); });
      link.classList.add("selected");
    }
    var menu = document.querySelector(".usermenu[open]");
    if (menu && !menu.contains(event.target)) menu.open = false;
  });

  document.addEventListener("submit", function (event) {
    var message = event.target.getAttribute("data-confirm");
    if (message && !window.confirm(message)) event.preventDefault();
  });

  // A refused post (a form's invalid values, a decision someone made first) answers with
  // the form and why, as the page does without JavaScript: show it where the form was.
  document.addEventListener("htmx:beforeSwap", function (event) {
    var status = event.detail.xhr.status;
    if (event.detail.requestConfig.verb === "post" && status >= 400 && status < 500) {
      event.detail.shouldSwap = true;
      event.detail.isError = false;
    }
  });

  // The timeline is replaced with the rest of #run-results on every poll: it keeps where the
  // reader scrolled to, and stays at the newest event if that is where they were.
  var timelineScroll = null;

  document.addEventListener("htmx:beforeSwap", function (event) {
    var timeline = document.getElementById("run-timeline");
    if (!timeline || !event.detail.target || event.detail.target.id !== "run-results") return;
    var atEnd = timeline.scrollTop + timeline.clientHeight >= timeline.scrollHeight - 4;
    timelineScroll = atEnd && timeline.scrollTop > 0 ? "end" : timeline.scrollTop;
  });

  document.addEventListener("htmx:afterSwap", function (event) {
    var id = event.detail.target && event.detail.target.id;
    if (id === "run-results" && timelineScroll !== null) {
      var timeline = document.getElementById("run-timeline");
      if (timeline) timeline.scrollTop = timelineScroll === "end" ? timeline.scrollHeight : timelineScroll;
      timelineScroll = null;
    }
    if (id === "run-steps") {
      restoreGroups(document.getElementById("run-steps"));
      markSelected();
    }
    if (id === "run-log") streamLog();  // another step or level: a new stream
    if (id === "run-log" || id === "log-tail" || id === "log-head") {
      applySearch();
      if (id !== "log-head") scrollLog();
    }
  });

  // Live log over Server-Sent Events when the browser has them; the htmx poller on
  // #log-tail is the fallback and is retired once the stream is open. Lines carry their seq,
  // so a line that both delivered is shown once.
  // With no line shown (a filter that matches none yet) the page's own cursor still counts:
  // the stream need not read the whole log again to find there is nothing to show.
  function lastSeq(log) {
    var lines = log.querySelectorAll(".log-line[data-seq]");
    var shown = lines.length ? parseInt(lines[lines.length - 1].getAttribute("data-seq"), 10) : 0;
    return Math.max(shown, parseInt(log.getAttribute("data-log-after") || "0", 10) || 0);
  }

  var source = null;

  function streamLog() {
    if (source) { source.close(); source = null; }
    var log = logBox();
    if (!log || !window.EventSource || !log.hasAttribute("data-log-stream")) return;
    source = new EventSource(log.getAttribute("data-log-stream") + "after=" + lastSeq(log));
    source.addEventListener("open", function () {
      var tail = document.getElementById("log-tail");
      if (tail && tail.hasAttribute("hx-trigger")) {
        var quiet = document.createElement("div");
        quiet.id = "log-tail";
        tail.replaceWith(quiet);
      }
    });
    source.addEventListener("line", function (event) {
      if (parseInt(event.lastEventId, 10) <= lastSeq(log)) return;
      var tail = document.getElementById("log-tail");
      var holder = document.createElement("div");
      holder.innerHTML = event.data;
      while (holder.firstChild) log.insertBefore(holder.firstChild, tail);
      applySearch();
      scrollLog();
    });
    source.addEventListener("end", function () { if (source) source.close(); });
  }

  document.addEventListener("DOMContentLoaded", function () {
    scrollLog();
    streamLog();
  });
})();
