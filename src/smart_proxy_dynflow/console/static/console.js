/* The Dynflow console's enhancements. Every page works without this script; it adds:
 * confirmation dialogs for actions, tab switching without reloads, expand/collapse all,
 * copying ids, filters applied on change, and live updates of a running plan (polling
 * GET <plan>/live: changed steps are replaced in place, new output is appended). */
(function () {
  "use strict";
  document.documentElement.classList.add("js");

  function ready(fn) {
    if (document.readyState !== "loading") fn();
    else document.addEventListener("DOMContentLoaded", fn);
  }

  // ---- confirmation dialogs ------------------------------------------------------------------
  function setupConfirm() {
    var dialog = document.getElementById("confirm-dialog");
    document.addEventListener("submit", function (event) {
      var form = event.target;
      if (!(form instanceof HTMLFormElement)) return;
      var message = form.getAttribute("data-confirm");
      if (!message || form.dataset.confirmed === "1") return;
      event.preventDefault();
      if (!dialog || typeof dialog.showModal !== "function") {
        if (window.confirm(message)) { form.dataset.confirmed = "1"; form.submit(); }
        return;
      }
      document.getElementById("confirm-message").textContent = message;
      dialog.returnValue = "";
      dialog.onclose = function () {
        if (dialog.returnValue === "ok") {
          form.dataset.confirmed = "1";
          var buttons = form.querySelectorAll("button");
          buttons.forEach(function (b) { b.disabled = true; });
          form.submit();
        }
      };
      dialog.showModal();
      document.getElementById("confirm-yes").focus();
    });
  }

  // ---- tabs ------------------------------------------------------------------------------------
  function showTab(name, push) {
    var panels = document.querySelectorAll(".tab-panel");
    if (!document.querySelector('.tab-panel[data-panel="' + name + '"]')) return false;
    panels.forEach(function (panel) { panel.hidden = panel.dataset.panel !== name; });
    document.querySelectorAll(".tabs a[data-tab]").forEach(function (a) {
      var active = a.dataset.tab === name;
      a.classList.toggle("active", active);
      a.setAttribute("aria-selected", active ? "true" : "false");
    });
    if (push) {
      var url = new URL(window.location.href);
      url.searchParams.set("tab", name);
      url.searchParams.delete("notice"); url.searchParams.delete("level"); url.searchParams.delete("sig");
      history.replaceState(null, "", url.pathname + url.search + url.hash);
    }
    return true;
  }

  function setupTabs() {
    document.addEventListener("click", function (event) {
      var link = event.target.closest("a[data-tab], a[data-tab-link]");
      if (link && !event.ctrlKey && !event.metaKey && !event.shiftKey) {
        if (showTab(link.dataset.tab || link.dataset.tabLink, true)) event.preventDefault();
        return;
      }
      var stepLink = event.target.closest("a[data-step-link]");
      if (stepLink) revealStep(stepLink.dataset.stepLink);
      var copy = event.target.closest("[data-copy]");
      if (copy && navigator.clipboard) {
        navigator.clipboard.writeText(copy.dataset.copy).then(function () {
          copy.textContent = "copied";
          setTimeout(function () { copy.textContent = "copy"; }, 1200);
        });
      }
      var toggle = event.target.closest("[data-details]");
      if (toggle) {
        var open = toggle.dataset.details === "open";
        var panel = document.querySelector(".tab-panel:not([hidden])") || document;
        panel.querySelectorAll("details.step-details").forEach(function (d) { d.open = open; });
      }
    });
    if (window.location.hash.indexOf("#step-") === 0) revealStep(window.location.hash.slice(6));
  }

  function revealStep(id) {
    var card = document.getElementById("step-" + id);
    if (!card) return;
    var panel = card.closest(".tab-panel");
    if (panel && panel.hidden) showTab(panel.dataset.panel, true);
    var details = card.querySelector("details.step-details");
    if (details) details.open = true;
    card.scrollIntoView({ block: "center" });
  }

  // ---- list filters ----------------------------------------------------------------------------
  function setupFilters() {
    var form = document.getElementById("filter-form");
    if (!form) return;
    form.addEventListener("change", function (event) {
      if (event.target.matches("input[type=checkbox], select")) form.requestSubmit();
    });
  }

  // ---- terminals -------------------------------------------------------------------------------
  function atBottom(el) { return el.scrollHeight - el.scrollTop - el.clientHeight < 24; }
  function scrollTerminals() {
    document.querySelectorAll("pre.terminal").forEach(function (t) { t.scrollTop = t.scrollHeight; });
  }

  // ---- live updates ----------------------------------------------------------------------------
  function setupLive() {
    var plan = document.getElementById("plan");
    if (!plan || plan.dataset.live !== "true") return;
    var url = plan.dataset.liveUrl;
    var version = plan.dataset.version;
    var after = plan.dataset.after || "0";
    // The step details last rendered, so unchanged ones are not replaced (an open backtrace
    // stays open, a scrolled input stays scrolled).
    var infos = {};
    var polls = 0;
    var failures = 0;
    var timer = null;

    function schedule(ms) { clearTimeout(timer); timer = setTimeout(poll, ms); }

    function apply(data) {
      version = String(data.v);
      after = String(data.after);
      plan.dataset.version = version;
      plan.dataset.after = after;
      var header = document.getElementById("plan-header");
      if (header && data.header) header.innerHTML = data.header;
      var failuresBox = document.getElementById("failures");
      if (failuresBox) failuresBox.innerHTML = data.failures;
      Object.keys(data.steps).forEach(function (id) {
        var step = data.steps[id];
        var card = document.getElementById("step-" + id);
        if (!card) return;
        card.className = "step state-" + step.state;
        card.dataset.state = step.state;
        var head = card.querySelector('[data-step-head="' + id + '"]');
        if (head) head.innerHTML = step.head;
        if (infos[id] !== step.info) {
          var info = card.querySelector('[data-step-info="' + id + '"]');
          if (info) info.innerHTML = step.info;
          infos[id] = step.info;
        }
      });
      Object.keys(data.output).forEach(function (actionId) {
        var pre = document.querySelector('pre[data-output="' + actionId + '"]');
        if (!pre) return;
        var wrap = pre.closest("[data-terminal]");
        if (wrap) wrap.hidden = false;
        var follow = atBottom(pre);
        pre.insertAdjacentHTML("beforeend", data.output[actionId]);
        if (follow) pre.scrollTop = pre.scrollHeight;
      });
      document.title = data.title + " · Dynflow console";
      plan.dataset.state = data.state;
      if (!data.live) {
        plan.dataset.live = "false";
        return false;
      }
      return true;
    }

    function poll() {
      if (document.hidden) { schedule(2000); return; }
      polls += 1;
      var query = "?after=" + encodeURIComponent(after);
      if (polls % 10 !== 0) query += "&v=" + encodeURIComponent(version);
      fetch(url + query, { headers: { Accept: "application/json" }, credentials: "same-origin" })
        .then(function (response) {
          if (!response.ok) throw new Error("HTTP " + response.status);
          return response.json();
        })
        .then(function (data) {
          failures = 0;
          if (data.unchanged) { schedule(700); return; }
          if (apply(data)) schedule(700);
        })
        .catch(function () {
          failures += 1;
          schedule(Math.min(15000, 1000 * failures));
        });
    }

    schedule(500);
  }

  ready(function () {
    setupConfirm();
    setupTabs();
    setupFilters();
    scrollTerminals();
    setupLive();
  });
})();
